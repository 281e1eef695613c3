"""python -m device_tests.compare A B: two device_report.json side by side (every figure, with the change)."""

import argparse
import json
import sys
from pathlib import Path

from edge.command import HelpFormatter, UserError


def flatten(value, prefix: str = "") -> dict:
    """{"latency.1.p50": 1.2, ...}: the numeric leaves of a report's figures."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


class ReportError(UserError, ValueError):
    """A file that is not a device report; the message says which and why."""


def load(path: Path) -> dict:
    """A device report: a JSON object with a ``figures`` object. The other parts are shown when present."""
    path = path / "device_report.json" if path.is_dir() else path
    try:
        report = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise ReportError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(report, dict) or not isinstance(report.get("figures"), dict):
        raise ReportError(
            f"{path} is not a device report (no figures object): give a device_report.json "
            "that make deploy brought home"
        )
    return report


def _part(report: dict, key: str) -> dict:
    value = report.get(key)
    return value if isinstance(value, dict) else {}


def _title(report: dict) -> str:
    device = _part(report, "device")
    return (
        f"{_part(report, 'bundle').get('name', '?')} on {device.get('hostname', '?')} "
        f"({device.get('model', '?')}), {report.get('created', '?')}"
    )


def table(a: dict, b: dict) -> str:
    fa, fb = flatten(a["figures"]), flatten(b["figures"])
    rows = [f"A: {_title(a)}", f"B: {_title(b)}", "", "| figure | A | B | change |", "|---|---:|---:|---:|"]
    for key in sorted(fa.keys() | fb.keys(), key=lambda k: (k.split(".")[0], k)):
        va, vb = fa.get(key), fb.get(key)
        change = f"{100 * (vb - va) / va:+.1f}%" if va and vb is not None else "-"
        rows.append(f"| {key} | {'-' if va is None else va} | {'-' if vb is None else vb} | {change} |")
    va, vb = _part(a, "versions"), _part(b, "versions")
    rows += ["", "| version | A | B |", "|---|---|---|"]
    rows += [f"| {p} | {va.get(p, '-')} | {vb.get(p, '-')} |" for p in sorted(va.keys() | vb.keys())]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m device_tests.compare", description=__doc__.split(":", 1)[1], formatter_class=HelpFormatter
    )
    parser.add_argument("a", type=Path, help="a device_report.json or the directory holding it")
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    try:
        print(table(load(args.a), load(args.b)))
    except (RecursionError, OverflowError) as e:  # figures nested or sized past what a report holds
        sys.exit(f"error: {args.a} or {args.b} is not a device report: {e}")


if __name__ == "__main__":
    from edge.command import run_main

    run_main("device_tests.compare")
