"""make sweep: models × widths × resolutions, each built by python -m pipeline and timed by the device tests."""
