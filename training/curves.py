"""Training curves (loss and top-1 per epoch) from the CSV logs: a QAT run is drawn after the float run it
started from, so one picture shows whether QAT kept, lost or regained the float model's accuracy."""

import csv
from collections import defaultdict
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from edge.files import atomic_path

CURVES = "curves.png"
PANELS = (("loss", ("train/loss", "val/loss")), ("top-1", ("train/top1", "val/top1")))


def epoch_means(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """metric -> epoch -> mean of the values logged in that epoch (per-step losses become one point)."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for name, value in row.items():
                if name != "epoch" and value not in ("", None):
                    sums[name][int(row["epoch"])].append(float(value))
    return {name: {epoch: sum(v) / len(v) for epoch, v in sorted(by_epoch.items())} for name, by_epoch in sums.items()}


def metrics_of_run(checkpoint: str | Path) -> Path | None:
    """The newest metrics.csv of the run that wrote ``checkpoint``: RUN/version_N/ beside RUN/checkpoints/
    (make's layout), or beside the checkpoint itself."""
    folder = Path(checkpoint).resolve().parent
    logs = sorted(
        [*folder.parent.glob("version_*/metrics.csv"), *folder.glob("version_*/metrics.csv")],
        key=lambda p: p.stat().st_mtime,
    )
    return logs[-1] if logs else None


def plot_curves(phases: list[tuple[str, Path]], out: Path) -> Path:
    """One figure, a panel per quantity; ``phases`` (name, metrics.csv) follow each other along the epochs."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 4), constrained_layout=True)
    offset = 0
    for phase, path in phases:
        means = epoch_means(path)
        epochs = max((max(v) for v in means.values() if v), default=-1) + 1
        for ax, (_, keys) in zip(axes, PANELS, strict=True):
            # Markers: a one-epoch phase is a point, not nothing.
            for key, style in zip(keys, (".-", "o-"), strict=False):
                series = means.get(key, {})
                ax.plot(
                    [offset + e + 1 for e in series],
                    list(series.values()),
                    style,
                    markersize=3,
                    label=f"{phase} {key.split('/')[0]}",
                )
        if offset:
            for ax in axes:
                ax.axvline(offset + 0.5, color="grey", linestyle=":")
        offset += epochs
    for ax, (title, _) in zip(axes, PANELS, strict=True):
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


class CurvesPicture(L.Callback):
    """Writes ``curves.png`` beside the run's CSV logs when a fit ends (QAT: after its float run's curves)."""

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        logger = trainer.logger
        if logger is None or not hasattr(logger, "log_dir"):
            return
        logger.save()  # the last epoch's rows, before Lightning's own teardown writes them
        start = module.hparams.get("float_checkpoint")
        before = metrics_of_run(start) if start else None
        phases = ([("float", before)] if before else []) + [(module.phase, Path(logger.log_dir) / "metrics.csv")]
        if phases[-1][1].is_file():
            rank_zero_info(f"training curves: {plot_curves(phases, Path(logger.save_dir) / CURVES)}")
