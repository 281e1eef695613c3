"""python -m sweep: see sweep/cli.py."""

from edge.command import run_main
from training.quiet import silence_known_noise

run_main("sweep.cli", quiet=silence_known_noise)
