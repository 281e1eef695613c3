"""make sweep: models × widths × resolutions, each built by make qat and timed by the device tests."""
