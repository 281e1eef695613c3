"""Every command's --help: each flag has a one-line meaning and its default, and the help ends with examples."""

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.cli import build_parser as deploy_parser
from edge.bench import build_parser as bench_parser
from edge.cli import build_parser as edge_parser
from export.cli import build_parser as export_parser
from pipeline.cli import build_parser as pipeline_parser
from sweep.cli import build_parser as sweep_parser


def parsers():
    edge = edge_parser()
    commands = next(a for a in edge._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {
        "edge": edge,
        **{f"edge {name}": p for name, p in commands.items()},
        "edge.bench": bench_parser(),
        "export": export_parser(),
        "deploy": deploy_parser(),
        "sweep": sweep_parser(),
        "pipeline": pipeline_parser(),
    }


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name,parser", parsers().items())
def test_each_flag_says_what_it_does_and_its_default(name, parser):
    assert parser.epilog.startswith("examples:\n  python -m "), name
    shown = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help and "\n" not in action.help, f"{name} {action.dest}: no one-line help"
        if action.option_strings:
            flag = action.option_strings[0]
            text = shown._get_help_string(action)
            assert "default" in text or action.required, f"{name} {flag}: no default"
            assert "(required)" in action.help or not action.required, f"{name} {flag}: say it is required"
            if action.default is not None and action.default is not False:
                assert text.endswith(("(default: %(default)s)", "(default: none)")), f"{name} {flag}: not shown"


def python_sources():
    for path in sorted(ROOT.glob("[a-z]*/**/*.py")):
        if not {".venv", "artifacts", "runs"} & set(path.relative_to(ROOT).parts):
            yield path, ast.parse(path.read_text())


def test_every_parser_shows_its_defaults_and_no_help_restates_one():
    """Defaults have one home, the parser: help text that restated one by hand would drift from it."""
    for path, tree in python_sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            if ast.unparse(node.func) == "argparse.ArgumentParser":
                shows = "formatter_class" in keywords or None in keywords  # **with_examples(...)
                assert shows, f"{path}:{node.lineno}: a parser without HelpFormatter"
            if getattr(node.func, "attr", "") == "add_argument" and "help" in keywords and "default" in keywords:
                default = keywords["default"]
                if not (isinstance(default, ast.Constant) and (default.value is None or default.value is False)):
                    help_text = ast.unparse(keywords["help"])
                    assert "default" not in help_text, f"{path}:{node.lineno}: help restates the default"


def test_training_help_shows_each_key_with_its_meaning_and_examples():
    out = subprocess.run(
        [sys.executable, "-m", "training", "fit", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "\nexamples:\n  python -m training fit --config configs/train.yaml" in out
    for flag in ("--data.val_size", "--data.source", "--trainer.max_epochs"):
        text = out.split(f"\n  {flag} ", 1)[1].split("\n  --", 1)[0]
        assert "default:" in text and len(text.split("(type:")[0].split()) > 2, f"{flag}: {text}"
