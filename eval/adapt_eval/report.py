"""`adapt report`: compare suite runs (e.g. base -> SFT -> DPO) beside the paper's rows: markdown with deltas, a
self-contained HTML page (charts embedded) and PNG charts. The publishing step embeds the markdown in model cards."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt_eval.suite import load_suite


@dataclass
class Run:
    name: str
    results: dict[str, Any]

    def headline(self, task: str) -> tuple[float | None, float | None]:
        """(value, stderr) of the task's headline metric in %, or (None, None) when not run or skipped."""
        record = self.results["tasks"].get(task)
        metric = self.results["headline"].get(task, {}).get("metric")
        score = (record or {}).get("scores", {}).get(metric) or {}
        value, stderr = score.get("value"), score.get("stderr")
        return (None if value is None else 100 * value, None if stderr is None else 100 * stderr)


def load_results(paths: list[str], names: list[str] | None = None) -> list[Run]:
    if names and len(names) != len(paths):
        raise ValueError(f"--names: {len(names)} names for {len(paths)} results")
    runs = []
    for i, ref in enumerate(paths):
        path = Path(ref) / "results.json" if Path(ref).is_dir() else Path(ref)
        if not path.is_file():
            raise FileNotFoundError(f"{ref}: no results.json (run `adapt eval` first)")
        results = json.loads(path.read_text(encoding="utf-8"))
        if "tasks" not in results or "headline" not in results:
            raise ValueError(f"{path}: not an `adapt eval` results.json (no tasks/headline)")
        default = Path(results["model"].get("path") or results["model"].get("hub", f"run{i}")).name
        runs.append(Run(names[i] if names else default, results))
    return runs


def comparison(runs: list[Run], suite_ref: str = "olmoe-paper") -> dict[str, Any]:
    suite = load_suite(suite_ref)
    tasks = [t for t in suite.tasks if any(t in r.results["tasks"] for r in runs)]
    rows = []
    for i, run in enumerate(runs):
        cells = {}
        for task in tasks:
            value, stderr = run.headline(task)
            previous = runs[i - 1].headline(task)[0] if i else None
            delta = None if value is None or previous is None else value - previous
            cells[task] = {"value": value, "stderr": stderr, "delta": delta}
        rows.append({"name": run.name, "limit": run.results.get("limit"), "cells": cells})
    paper = [{"name": f"paper: {name}", "cells": {t: {"value": v} for t, v in values.items() if t in tasks}}
             for name, values in suite.paper.items()]
    metrics = {t: suite.tasks[t].get("headline") for t in tasks}
    return {"suite": suite.name, "tasks": tasks, "metrics": metrics, "runs": rows, "paper": paper}


def _cell(c: dict | None) -> str:
    if not c or c.get("value") is None:
        return "–"
    text = f"{c['value']:.1f}"
    if c.get("stderr") is not None:
        text += f" ± {c['stderr']:.1f}"
    if c.get("delta") is not None:
        text += f" ({c['delta']:+.1f})"
    return text


def render_markdown(comp: dict[str, Any]) -> str:
    tasks = comp["tasks"]
    lines = [f"Suite `{comp['suite']}`: headline metric per task in % (± standard error; in brackets the change from "
             f"the run above). Paper rows: OLMoE paper, Table 5.", "",
             "| run | " + " | ".join(f"{t} ({comp['metrics'][t]})" for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    for row in comp["runs"]:
        name = row["name"] + (f" (limit {row['limit']})" if row.get("limit") else "")
        lines.append(f"| {name} | " + " | ".join(_cell(row["cells"].get(t)) for t in tasks) + " |")
    for row in comp["paper"]:
        lines.append(f"| *{row['name']}* | " + " | ".join(_cell(row["cells"].get(t)) for t in tasks) + " |")
    if any(r.get("limit") for r in comp["runs"]):
        lines += ["", "Runs with a limit scored only the first items of each benchmark: not comparable to the paper."]
    return "\n".join(lines) + "\n"


def render_charts(comp: dict[str, Any], folder: Path) -> list[Path]:
    """One grouped bar chart of every task's headline metric: the runs solid, the paper's rows hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, series = comp["tasks"], comp["runs"] + comp["paper"]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(tasks)), 4), dpi=120)
    for i, row in enumerate(series):
        values = [row["cells"].get(t, {}).get("value") or 0.0 for t in tasks]
        errors = [row["cells"].get(t, {}).get("stderr") or 0.0 for t in tasks]
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(tasks))]
        ax.bar(xs, values, width, yerr=errors, label=row["name"], capsize=2,
               hatch="//" if row["name"].startswith("paper") else None,
               alpha=0.6 if row["name"].startswith("paper") else 1)
    ax.set_xticks(range(len(tasks)), [f"{t}\n{comp['metrics'][t]}" for t in tasks], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{comp['suite']}: headline metrics")
    fig.tight_layout()
    path = folder / "scores.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


def render_html(comp: dict[str, Any], charts: list[Path]) -> str:
    """One file with everything inline (charts as data URIs), so it can be mailed or attached as it is."""
    tasks = comp["tasks"]
    head = "".join(f"<th>{html.escape(t)}<br><small>{html.escape(str(comp['metrics'][t]))}</small></th>"
                   for t in tasks)
    body = ""
    for row in comp["runs"] + comp["paper"]:
        style = ' class="paper"' if row["name"].startswith("paper") else ""
        body += f"<tr{style}><td>{html.escape(row['name'])}</td>" + "".join(
            f"<td>{html.escape(_cell(row['cells'].get(t)))}</td>" for t in tasks) + "</tr>\n"
    images = "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                     for p in charts)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(comp['suite'])} report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}tr.paper{{color:#666;font-style:italic}}
img{{max-width:100%}}</style></head><body><h1>{html.escape(comp['suite'])}</h1>
<p>Headline metric per task in % (± standard error; in brackets the change from the run above). Paper rows: OLMoE
paper, Table 5.</p><table><tr><th>run</th>{head}</tr>
{body}</table>{images}</body></html>
"""


def write_comparison(runs: list[Run], folder: str | Path, suite_ref: str = "olmoe-paper",
                     analysis: str | Path | None = None) -> list[Path]:
    """The report files; with `analysis` (an `adapt analyze` output folder), also the router section and its
    pictures (copied into `router/`)."""
    from adapt_eval.routing import report as routing_report  # imports torch: keep `adapt report --help` light

    folder = Path(folder)
    result = routing_report.read_analysis(analysis) if analysis else None  # a wrong folder fails before writing
    folder.mkdir(parents=True, exist_ok=True)
    comp = comparison(runs, suite_ref)
    charts = render_charts(comp, folder)
    markdown, page = render_markdown(comp), render_html(comp, charts)
    if result is not None:
        source = Path(analysis) if Path(analysis).is_dir() else Path(analysis).parent
        pictures = routing_report.copy_pictures(source, result, folder / "router")
        markdown += "\n" + routing_report.router_section(result, [str(p.relative_to(folder)) for p in pictures])
        page = page.replace("</body>", routing_report.router_html(result, pictures) + "</body>")
        charts += pictures
        comp["router"] = {"analysis": str(analysis), "saturation": result["saturation"]}
    outputs = {"report.md": markdown, "report.html": page, "report.json": json.dumps(comp, indent=2) + "\n"}
    for name, text in outputs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / n for n in outputs] + charts
