"""Training curves for the model card, drawn from the run's metrics.jsonl (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

from adapt.runfolder import read_records

# metric key -> title. The router losses are what this toolkit adds, so each gets its own figure.
CURVES = {
    "loss": "training loss",
    "aux_loss": "load-balancing loss (aux_loss)",
    "z_loss": "router z-loss",
    "rewards/margins": "DPO reward margin (chosen - rejected)",
}


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return read_records(path)


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every training log that has `key` (evaluation and end-of-training summaries have not)."""
    return [(r["step"], r[key]) for r in rows
            if "step" in r and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def plot_curves(metrics_path: Path, folder: Path) -> dict[str, Path]:
    """One PNG per metric present in the log: {metric: path}. Nothing is drawn for a metric never logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, written = read_metrics(metrics_path), {}
    for key, title in CURVES.items():
        points = series(rows, key)
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None, lw=1)
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (key.replace("/", "_") + ".png")
        fig.savefig(path)
        plt.close(fig)
        written[key] = path
    return written
