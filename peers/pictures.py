"""The latency distributions of ours and LiteRT's programs in one picture: where the tail differs, a table's
p50 and p90 do not show how.

    latency.png beside report.json: per precision (int8, fp32) each program's sorted samples, so the
    median sits at the middle and the slow calls rise at the right end.
"""

from pathlib import Path

from edge.files import atomic_path

PICTURE = "latency.png"
DRAWN = ("ExecuTorch (our runner)", "LiteRT")  # the runtimes the picture compares


def draw(result: dict, title: str, out: Path) -> Path | None:
    """One panel per precision, a line per program of ours and LiteRT: its samples sorted, against the share
    of calls at most that slow. None when no program kept its samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["programs"] if r.get("samples_ms") and r["runtime_label"] in DRAWN]
    precisions = [p for p in ("int8", "fp32") if any(r["precision"] == p for r in rows)]
    if not precisions:
        return None
    fig, axes = plt.subplots(1, len(precisions), figsize=(5.5 * len(precisions), 4.2), squeeze=False)
    for ax, precision in zip(axes[0], precisions, strict=True):
        for r in (r for r in rows if r["precision"] == precision):
            samples = sorted(r["samples_ms"])
            share = [(i + 1) / len(samples) for i in range(len(samples))]
            ax.plot(
                samples,
                share,
                linewidth=2 if r["ours"] else 1.2,
                label=f"{r['name']}: p50 {r['p50_ms']:.3f}, p90 {r['p90_ms']:.3f}, p99 {r['p99_ms']:.3f} ms",
            )
        for q in (0.5, 0.9, 0.99):
            ax.axhline(q, color="grey", linewidth=0.6, linestyle=":")
        ax.set(title=precision, xlabel="ms per call", ylabel="share of calls at most this slow", ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out
