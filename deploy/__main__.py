"""python -m deploy: see deploy/cli.py."""

from edge.command import run_main

run_main("deploy.cli")
