"""The demo's report (`adapt demo`): the built-in task's scores after each stage (base -> SFT -> DPO), as JSON and
markdown. Benchmark suites are compared by `report.py` (`adapt report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEADLINE = ("task_accuracy", "preference_accuracy")


def _fmt(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else str(value)


def render_markdown(report: dict[str, Any], title: str = "adapt report") -> str:
    stages = report["stages"]
    names = list(stages)
    metrics = [m for m in next(iter(stages.values())) if isinstance(next(iter(stages.values()))[m], float)]
    metrics = [m for m in HEADLINE if m in metrics] + [m for m in metrics if m not in HEADLINE]
    lines = [f"# {title}", ""]
    if report.get("task"):
        lines += [f"Task `{report['task']}`, held-out split. Scores in %; deltas against the previous stage.", ""]
    lines += ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in metrics:
        cells = []
        for i, name in enumerate(names):
            value = stages[name].get(metric)
            cell = _fmt(value)
            if i and isinstance(value, float) and isinstance(stages[names[i - 1]].get(metric), float):
                cell += f" ({100 * (value - stages[names[i - 1]][metric]):+.1f})"
            cells.append(cell)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    for name in names:
        samples = stages[name].get("samples") or []
        if samples:
            lines += ["", f"**{name}** sample completions:", ""]
            lines += [f"- `{s['prompt']}` → `{s['completion']}` ({'✓' if s['score'] else '✗'})" for s in samples[:3]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], folder: str | Path, title: str = "adapt report") -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, title), encoding="utf-8")
    return json_path, md_path
