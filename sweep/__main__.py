"""python -m sweep: see sweep/cli.py."""
from edge.command import run_main

run_main("sweep.cli")
