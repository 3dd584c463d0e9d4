"""The router analysis as pictures (matplotlib, Agg: no display needed), each readable at a glance:

- `saturation.png`: the router saturation per layer for each pair of models. A bar near 1 means the routing was
  kept; k/E (the dashed line) is what two unrelated routings share by chance.
- `experts_<model>.png`, three panels: each layer's expert load against its fair share (blue cells are starved
  experts, dark blue dead ones: a collapsed router shows as a row of blue with one or two red cells); the expert x
  domain share of the last MoE layer (a dark column is an expert that takes a domain's tokens, uniform grey a router
  that ignores the domain); and that layer's co-activation P(j | i) (dark off-diagonal cells are experts chosen
  together).
- `training_load.png` (from a run's `router_stats.jsonl`): each expert's share of the tokens per layer over the
  training steps. Lines that fan out to 0 and to the top are a routing collapse happening during training.
"""

from __future__ import annotations

from pathlib import Path

from adapt.runfolder import read_records
from adapt_eval.routing.metrics import chance


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_analysis(result: dict, folder: Path) -> list[Path]:
    """The pictures of an `analyze` result as read back from analysis.json (layer numbers as strings), written to
    `folder`; their paths."""
    plt, written = _pyplot(), []
    folder.mkdir(parents=True, exist_ok=True)
    if result["saturation"]:
        fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
        pairs = list(result["saturation"])
        layers = sorted({int(n) for values in result["saturation"].values() for n in values})
        width = 0.8 / len(pairs)
        for i, pair in enumerate(pairs):
            values = [result["saturation"][pair][str(n)] for n in layers]  # as read from analysis.json
            ax.bar([n + i * width for n in layers], values, width, label=pair)
        k_over_e = chance(result)
        if k_over_e is not None:
            ax.axhline(k_over_e, color="grey", ls="--", lw=1, label=f"chance (k/E = {k_over_e:.2f})")
        ax.set(xlabel="layer", ylabel="saturation", ylim=(0, 1.05), title="router saturation between models")
        ax.set_xticks([n + width * (len(pairs) - 1) / 2 for n in layers], [str(n) for n in layers])
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, folder / "saturation.png", plt))
    for name, model in result["per_model"].items():
        written.append(_save(_model_figure(plt, name, model), folder / f"experts_{name}.png", plt))
    return written


def _model_figure(plt, name: str, model: dict):
    """Three panels: every layer's load against uniform (collapse at a glance), the last layer's expert x domain
    shares, and its co-activation P(j | i)."""
    import numpy as np

    layers = sorted(model["layers"], key=int)
    last = model["layers"][layers[-1]]
    experts = len(last["load"])
    load = np.array([model["layers"][n]["load"] for n in layers], dtype=float)
    relative = load / np.maximum(load.sum(1, keepdims=True), 1) * experts  # 1.0: the expert's fair share
    domains = sorted(last["domains"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 1.5 + 0.35 * max(len(layers), len(domains), 6)), dpi=100)
    image = axes[0].imshow(relative, aspect="auto", cmap="RdBu_r", vmin=0, vmax=2)
    axes[0].set(xlabel="expert", ylabel="layer", title="load / fair share (white 1, blue 0 = dead)")
    axes[0].set_yticks(range(len(layers)), layers)
    fig.colorbar(image, ax=axes[0])
    image = axes[1].imshow([last["domains"][d] for d in domains], aspect="auto", cmap="Greys", vmin=0)
    axes[1].set(xlabel="expert", title=f"share of each domain's tokens (layer {layers[-1]})")
    axes[1].set_yticks(range(len(domains)), domains)
    fig.colorbar(image, ax=axes[1])
    image = axes[2].imshow(last["coactivation"], cmap="Greys", vmin=0, vmax=1)
    axes[2].set(xlabel="expert j", ylabel="expert i", title=f"co-activation P(j | i) (layer {layers[-1]})")
    fig.colorbar(image, ax=axes[2])
    fig.suptitle(f"{name}: routing on {model['tokens']:,} tokens", fontsize=11)
    fig.tight_layout()
    return fig


def plot_training_load(run_dir: Path, folder: Path) -> Path:
    """Each expert's share of the tokens over training, one panel per MoE layer, from `router_stats.jsonl`."""
    path = Path(run_dir) / "router_stats.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no router_stats.jsonl (a run trained with router.log_stats: true has one)")
    rows = read_records(path)
    if not rows:
        raise ValueError(f"{path}: no rows (the run logged no routing statistics)")
    plt = _pyplot()
    layers = rows[0].get("layers") or list(range(len(rows[0]["expert_share"])))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 2.8), dpi=100, squeeze=False)
    steps = [r["step"] for r in rows]
    for i, (ax, layer) in enumerate(zip(axes[0], layers)):
        shares = [r["expert_share"][i] for r in rows]
        for expert in range(len(shares[0])):
            ax.plot(steps, [s[expert] for s in shares], lw=0.8)
        ax.set(title=f"layer {layer}", xlabel="step", ylabel="share of tokens" if i == 0 else None)
    fig.suptitle("expert load during training (one line per expert)", fontsize=10)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    return _save(fig, folder / "training_load.png", plt)


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path)
    plt.close(fig)
    return path
