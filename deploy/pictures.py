"""The device report as a picture, drawn on the host once deploy has brought the report home (the device
needs no matplotlib): inference latency per thread count as histograms, and the live pipeline's frames/s
over time with its memory. A report without a live pipeline (a phone's: the deploy is the measurement)
shows instead the latency's percentiles against the thread count, with the phone's core clusters marked:
what a phone user picks threads by.

    python -m deploy.pictures artifacts/devices/rpi5/<release>/device_report.json   (writes device_report.png)
"""

import argparse
import json
import sys
from pathlib import Path

from edge.command import HelpFormatter
from edge.files import atomic_path, write_atomic

PICTURE = "device_report.png"
LINK = f"\n![latency per thread count, pipeline frames/s and memory over time]({PICTURE})\n"


def has_figures(report: dict) -> bool:
    figures = report.get("figures", {})
    return any(row.get("samples_ms") for row in figures.get("latency", {}).values()) or any(
        run.get("timeline", {}).get("t_s") for run in figures.get("pipeline", {}).values()
    )


def draw(report: dict, title: str, out: Path) -> Path:
    """Left: a latency histogram per thread count, its p50 dashed. Right: frames/s per second of each pipeline
    run, RSS on the second axis. A panel with nothing recorded says so rather than vanishing."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    figures = report.get("figures", {})
    fig, (latency, pipeline) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = sorted(((int(t), row) for t, row in figures.get("latency", {}).items() if row.get("samples_ms")))
    for (threads, row), colour in zip(rows, plt.cm.tab10.colors, strict=False):
        latency.hist(
            row["samples_ms"],
            bins=40,
            histtype="step",
            color=colour,
            label=f"{threads} thread{'s' * (threads > 1)}: p50 {row['p50']:.2f} ms",
        )
        latency.axvline(row["p50"], color=colour, linestyle="--", linewidth=1)
    latency.set(title="inference latency", xlabel="ms per inference", ylabel="runs")
    _finish(latency, bool(rows), "no latency samples in this report")
    runs = [
        (name, run["timeline"])
        for name, run in figures.get("pipeline", {}).items()
        if run.get("timeline", {}).get("t_s")
    ]
    if runs or not rows:
        draw_pipeline(pipeline, runs, plt.cm.tab10.colors)
    else:
        draw_threads(pipeline, rows, figures.get("cores", {}))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


def draw_pipeline(pipeline, runs: list, colours) -> None:
    """Frames/s per second of each pipeline run, RSS on a second axis."""
    memory = pipeline.twinx()
    for (name, timeline), colour in zip(runs, colours, strict=False):
        pipeline.plot(timeline["t_s"], timeline["fps"], ".-", color=colour, label=f"{name}: frames/s")
        memory.plot(timeline["t_s"], timeline["rss_mb"], ":", color=colour, label=f"{name}: RSS")
    pipeline.set(title="live pipeline", xlabel="seconds since the first result", ylabel="frames/s")
    memory.set_ylabel("RSS (MB, dotted)")
    memory.ticklabel_format(useOffset=False)
    pipeline.set_ylim(bottom=0)
    _finish(pipeline, bool(runs), "no pipeline timeline in this report", memory)


def draw_threads(ax, rows: list[tuple[int, dict]], cores: dict) -> None:
    """p50, p90 and p99 against the thread count; each core cluster (big, little) shaded over the thread
    counts that fit on it, so where adding threads spills onto slower cores shows."""
    threads = [t for t, _ in rows]
    for quantile, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
        ax.plot(threads, [row[quantile] for _, row in rows], style, label=quantile)
    start = 0
    for (name, cluster), shade in zip(cores.items(), ("tab:orange", "tab:blue", "tab:green"), strict=False):
        count = cpu_count(cluster.get("cpus", ""))
        mhz = f", {cluster['max_mhz']} MHz" if cluster.get("max_mhz") else ""
        ax.axvspan(start + 0.5, start + count + 0.5, color=shade, alpha=0.08, label=f"{name} cores: {count}{mhz}")
        start += count
    ax.set(title="latency by thread count", xlabel="threads", ylabel="ms per inference", xticks=threads)
    ax.set_ylim(bottom=0)
    _finish(ax, True, "")


def cpu_count(span: str) -> int:
    """CPUs in a span as the report writes it: ``0-3`` or ``0,2,5``."""
    count = 0
    for part in filter(None, span.split(",")):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def _finish(ax, drawn: bool, empty: str, twin=None) -> None:
    """Grid and one legend (a twin axis's lines in it too), or the reason the panel is empty."""
    ax.grid(alpha=0.3)
    if drawn:
        handles, labels = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels() if twin else ([], [])
        ax.legend(handles + more[0], labels + more[1], fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)


def render(report_json: Path) -> Path | None:
    """device_report.png beside ``report_json``, linked from its .md; None when there is nothing to draw or no
    matplotlib here (an `edge`-only install), with the reason on stderr. Never fails a deploy."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("no device report picture: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return None
    try:
        report = json.loads(report_json.read_text())
    except (OSError, ValueError, RecursionError) as e:
        print(f"no device report picture: cannot read {report_json}: {e}", file=sys.stderr)
        return None
    try:
        if not has_figures(report):
            print(
                f"no device report picture: {report_json} has no latency samples or pipeline timeline "
                "(written by older device tests?)",
                file=sys.stderr,
            )
            return None
        summary = report_json.with_suffix(".md")
        text = summary.read_text() if summary.is_file() else ""
        title = text.splitlines()[0].removeprefix("# ") if text else report_json.parent.name  # the report's heading
        out = draw(report, title, report_json.with_name(PICTURE))
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError, OverflowError) as e:
        print(
            f"no device report picture: {report_json} is not a device report ({type(e).__name__}: {e})", file=sys.stderr
        )
        return None
    if text and LINK not in text:
        write_atomic(summary, text + LINK)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.pictures", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("report", type=Path, help="a device_report.json, or the directory holding it")
    args = parser.parse_args(argv)
    path = args.report / "device_report.json" if args.report.is_dir() else args.report
    picture = render(path)
    if picture is None:
        sys.exit(1)
    print(picture)


if __name__ == "__main__":
    main()
