"""python -m training: see training/cli.py."""
from edge.command import run_main

run_main("training.cli")
