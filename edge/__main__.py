"""python -m edge: see edge/cli.py."""

from edge.command import run_main

run_main("edge.cli")
