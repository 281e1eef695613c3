from edge.command import run_main

run_main("peers.cli")
