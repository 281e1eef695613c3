"""python -m export: see export/cli.py."""

from edge.command import run_main
from training.quiet import silence_known_noise

run_main("export.cli", quiet=silence_known_noise)
