"""python -m training: see training/cli.py."""

from edge.command import run_main
from training.quiet import silence_known_noise

run_main("training.cli", quiet=silence_known_noise)
