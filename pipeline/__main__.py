"""python -m pipeline: see pipeline/cli.py."""

from edge.command import run_main
from training.quiet import silence_known_noise

run_main("pipeline.cli", quiet=silence_known_noise)
