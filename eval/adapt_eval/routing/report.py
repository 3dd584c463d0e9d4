"""The router analysis in words: the "What adaptation did to the router" section that `adapt report`, the demo's
report and the pushed model card show beside the scores, from an `analysis.json` (adapt_eval.routing.run.analyze).

It reads at a glance: one line per pair of models (how many expert choices survived, against chance), one line per
model (dead experts, the most uneven layer), then the tables and the pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapt_eval.routing.metrics import chance
from adapt_eval.routing.plots import plot_analysis

TITLE = "What adaptation did to the router"
PICTURES = ("saturation.png",)  # then experts_<model>.png per model


def read_analysis(folder: str | Path) -> dict:
    path = Path(folder) / "analysis.json" if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no analysis.json (run `adapt analyze ... --output {folder}` first)")
    result = json.loads(path.read_text(encoding="utf-8"))
    if "per_model" not in result or "saturation" not in result:
        raise ValueError(f"{path}: not an `adapt analyze` analysis.json (no per_model/saturation)")
    return result


def write_analysis(result: dict, folder: Path) -> list[Path]:
    """`analysis.json` and the pictures into `folder`: what `adapt analyze` and the demo leave behind."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "analysis.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    # Drawn from the file as written (layer numbers as JSON keys), exactly what a later `adapt report` reads.
    return [folder / "analysis.json", *plot_analysis(read_analysis(folder), folder)]


def pictures(result: dict, folder: Path) -> list[Path]:
    names = list(PICTURES) + [f"experts_{name}.png" for name in result["per_model"]]
    return [folder / n for n in names if (folder / n).is_file()]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def glance(result: dict) -> list[str]:
    """One line per pair of models and per model: what a reader needs to know first."""
    lines, k_over_e = [], chance(result)
    for pair, layers in result["saturation"].items():
        low = min(layers, key=layers.get)
        lines.append(f"- **{pair.replace('->', ' → ')}**: {100 * _mean(layers.values()):.0f}% of the expert choices "
                     f"kept on average (layer {low}: {100 * layers[low]:.0f}%; two unrelated routers share "
                     f"{100 * (k_over_e or 0):.0f}%).")
    for name, model in result["per_model"].items():
        layers = model["layers"]
        dead = {n: layer["dead_experts"] for n, layer in layers.items() if layer["dead_experts"]}
        state = ("no dead experts" if not dead else "dead experts (no token of the sample) in " + ", ".join(
            f"layer {n}: {', '.join(map(str, experts))}" for n, experts in dead.items()))
        entropy = _mean(x["load_entropy"] for x in layers.values())
        line = f"- **{name}**: {state}; load entropy {entropy:.2f} of 1 on average"
        alive = {n: layer["load_ratio"] for n, layer in layers.items() if not layer["dead_experts"]}
        if alive:
            uneven = max(alive, key=alive.get)
            line += f"; most uneven layer without a dead expert: {uneven} (busiest / idlest {alive[uneven]:.1f})"
        lines.append(line + ".")
    return lines


def saturation_table(result: dict) -> list[str]:
    layers = sorted({n for values in result["saturation"].values() for n in values}, key=int)
    if not layers:
        return []
    lines = ["| saturation | " + " | ".join(f"layer {n}" for n in layers) + " |", "|---|" + "---:|" * len(layers)]
    for pair, values in result["saturation"].items():
        lines.append(f"| {pair.replace('->', ' → ')} | " + " | ".join(
            f"{values[n]:.3f}" if n in values else "–" for n in layers) + " |")
    return lines


def vocabulary_lines(result: dict, experts: int = 4) -> list[str]:
    """The last model's most specialised experts in its last MoE layer, with their tokens."""
    name, model = list(result["per_model"].items())[-1]
    layer_id = max(model["layers"], key=int)
    vocab = model["layers"][layer_id]["vocabulary"]
    ranked = sorted(range(len(vocab)), key=lambda e: -_mean(t["share"] for t in vocab[e]) if vocab[e] else 0)
    lines = []
    for e in [e for e in ranked if vocab[e]][:experts]:
        tokens = ", ".join(f"`{t['token'].strip() or repr(t['token'])}` {100 * t['share']:.0f}%" for t in vocab[e])
        lines.append(f"- expert {e}: {tokens}")
    if lines:
        lines.insert(0, f"Vocabulary specialization, **{name}**, layer {layer_id}: the share of each token's "
                        "occurrences routed to the expert, for its most specialised experts:")
    return lines


def router_section(result: dict, picture_paths: list[str], heading: str = "##") -> str:
    """The markdown section; `picture_paths` as the document links them."""
    domains = ", ".join(f"{d} ({v['texts']} texts, {v['tokens']:,} tokens)" for d, v in result["data"].items())
    lines = [f"{heading} {TITLE}", "", f"Routing of {', '.join(result['per_model'])} on the same tokens: {domains}. "
             "Saturation is the mean share of a token's top-k experts that two models have in common (OLMoE paper, "
             "section 5); 1.0 is a router left as it was.", "", *glance(result), "", *saturation_table(result), ""]
    vocab = vocabulary_lines(result)
    if vocab:
        lines += [*vocab, ""]
    lines += [f"![{Path(p).stem}]({p})" for p in picture_paths]
    return "\n".join(lines) + "\n"


def copy_pictures(source: Path, result: dict, dest: Path) -> list[Path]:
    """The analysis's pictures copied into `dest` (a report or a model card keeps its own copies)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, dest / p.name)) for p in pictures(result, source)]


def router_html(result: dict, picture_paths: list[Path]) -> str:
    """The section for a self-contained HTML page: the same words, the table, the pictures inline."""
    import base64
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text))

    items = "".join(f"<li>{inline(line[2:])}</li>" for line in glance(result))
    rows = saturation_table(result)
    table = ""
    if rows:
        cells = [[c.strip() for c in row.strip("|").split("|")] for row in [rows[0]] + rows[2:]]
        table = "<table>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                                    for row in cells) + "</table>"
    images = "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                     for p in picture_paths)
    return f"<h2>{TITLE}</h2><ul>{items}</ul>{table}{images}"
