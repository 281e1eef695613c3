"""What a sweep tells its user: the table, the Pareto fronts of accuracy against latency and against MACs
(PNG), and the most accurate bundle within a latency budget."""

from pathlib import Path

from edge.bundle import PICTURES, read_meta, write_bundle
from edge.files import atomic_path

FASTER = 0.9  # another thread count's p50 below this share of the profile's is worth a note
FRONTS = {"latency": ("p50", "latency p50 (ms)", "latency"), "macs": ("macs", "multiply-accumulates (M)", "MACs")}


def front(rows: list[dict], cost: str) -> list[dict]:
    """The rows no other row beats on both accuracy and ``cost`` (lower is better), cheapest first."""
    best, kept = -1.0, []
    for row in sorted((r for r in rows if r.get(cost) is not None), key=lambda r: (r[cost], -r["top1"])):
        if row["top1"] > best:
            kept.append(row)
            best = row["top1"]
    return kept


def pick(rows: list[dict], budget_ms: float) -> dict | None:
    """The most accurate point whose p90 latency is within the budget (p90: 9 inferences in 10 make it)."""
    within = [r for r in rows if r.get("p90") is not None and r["p90"] <= budget_ms]
    return max(within, key=lambda r: (r["top1"], -r["p90"])) if within else None


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict], failed: dict[str, str]) -> str:
    """Markdown, fastest first; points that failed before they were built after, with their reason (a built
    point that failed on the device keeps its row, with the reason in its note)."""
    on_front = {id(r) for r in front(rows, "p50")}
    lines = [
        "| model | α | ρ | MACs (M) | params (M) | .pte (MB) | top-1 | p50 / p90 (ms) | build (min) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.get("p50") is None, r.get("p50") or 0, r["name"])):
        notes = (["Pareto"] if id(r) in on_front else []) + (["PTQ shipped"] if r["scheme"] == "ptq-int8" else [])
        notes += [f"failed {t}" for t in r.get("failed_tests", [])]
        if (fast := r.get("fastest")) and fast["p50"] < FASTER * r["p50"]:
            notes.append(f"{fast['p50']:.2f} ms at {fast['threads']} thread{'s' * (fast['threads'] > 1)}")
        if "p50" not in r:
            notes.append(f"not measured: {failed[r['point']]}" if r["point"] in failed else "not measured")
        lines.append(
            f"| {r['model']} | {r['width']:g} | {r['resolution']} | {r['macs'] / 1e6:.1f} | "
            f"{r['params'] / 1e6:.2f} | {r['pte_bytes'] / 1e6:.2f} | {100 * r['top1']:.2f}% | "
            f"{_num(r.get('p50'), '.2f')} / {_num(r.get('p90'), '.2f')} | "
            f"{_num(r['build_s'] / 60 if 'build_s' in r else None, '.1f')} | {', '.join(notes)} |"
        )
    built = {r["point"] for r in rows}
    lines += [f"| {name} | | | | | | | | | **failed**: {why} |" for name, why in failed.items() if name not in built]
    return "\n".join(lines)


def plot_front(rows: list[dict], cost: str, out: Path, title: str) -> Path:
    """The figure of :func:`front_figure`, written to ``out``."""
    fig = front_figure(rows, cost, title)
    import matplotlib.pyplot as plt  # after front_figure chose the file-only backend

    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


def front_figure(rows: list[dict], cost: str, title: str):
    """Every point (one colour per model, labelled α/ρ; a model's points of one α joined across ρ, as the
    papers draw the resolution multiplier) and the front as a step line. MACs go on a log axis, as in the
    papers' accuracy-vs-MACs figures."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter

    key, label, _ = FRONTS[cost]
    scale = 1e-6 if cost == "macs" else 1.0
    fig, ax = plt.subplots(figsize=(7, 4.8))
    drawn = [r for r in rows if r.get(key) is not None]
    for model, colour in zip(dict.fromkeys(r["model"] for r in drawn), plt.cm.tab10.colors, strict=False):
        mine = [r for r in drawn if r["model"] == model]
        ax.scatter([r[key] * scale for r in mine], [100 * r["top1"] for r in mine], color=colour, label=model, s=30)
        for width in dict.fromkeys(r["width"] for r in mine):
            line = sorted((r for r in mine if r["width"] == width), key=lambda r: r["resolution"])
            ax.plot(
                [r[key] * scale for r in line], [100 * r["top1"] for r in line], color=colour, alpha=0.4, linewidth=1
            )
        for r in mine:
            ax.annotate(
                f"α{r['width']:g} ρ{r['resolution']}",
                (r[key] * scale, 100 * r["top1"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    best = front(drawn, key)
    ax.step(
        [r[key] * scale for r in best],
        [100 * r["top1"] for r in best],
        where="post",
        color="grey",
        linestyle="--",
        linewidth=1,
        label="Pareto front",
    )
    if cost == "macs":
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=label, ylabel="top-1 of the int8 .pte (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def copy_bundle(source: Path, out: Path) -> None:
    """The picked bundle to ``out``, whole or not at all (never over something that is not a bundle)."""
    meta = read_meta(source)
    names = [*meta.files[1:], *(p for p in PICTURES if (source / p).is_file())]
    write_bundle(out, meta, {name: (source / name).read_bytes() for name in names})
