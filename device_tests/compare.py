"""python -m device_tests.compare A B: two device_report.json side by side (every figure, with the change)."""
import argparse
import json
import sys
from pathlib import Path


def flatten(value, prefix: str = "") -> dict:
    """{"latency.1.p50": 1.2, ...}: the numeric leaves of a report's figures."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


def load(path: Path) -> dict:
    path = path / "device_report.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: cannot read {path}: {e}")


def table(a: dict, b: dict) -> str:
    def title(r):
        return f"{r['bundle']['name']} on {r['device']['hostname']} ({r['device']['model']})"

    fa, fb = flatten(a["figures"]), flatten(b["figures"])
    rows = [f"A: {title(a)}, {a['created']}", f"B: {title(b)}, {b['created']}", "",
            "| figure | A | B | change |", "|---|---:|---:|---:|"]
    for key in sorted(fa.keys() | fb.keys(), key=lambda k: (k.split(".")[0], k)):
        va, vb = fa.get(key), fb.get(key)
        change = f"{100 * (vb - va) / va:+.1f}%" if va and vb is not None else "-"
        rows.append(f"| {key} | {'-' if va is None else va} | {'-' if vb is None else vb} | {change} |")
    versions = sorted(a["versions"].keys() | b["versions"].keys())
    rows += ["", "| version | A | B |", "|---|---|---|"]
    rows += [f"| {p} | {a['versions'].get(p, '-')} | {b['versions'].get(p, '-')} |" for p in versions]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m device_tests.compare", description=__doc__.split(":", 1)[1])
    parser.add_argument("a", type=Path, help="a device_report.json or the directory holding it")
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    print(table(load(args.a), load(args.b)))


if __name__ == "__main__":
    main()
