"""python -m export: see export/cli.py."""
from edge.command import run_main

run_main("export.cli")
