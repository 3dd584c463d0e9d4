"""What every benchmark script ends with: the run's record (device, versions, command), then the table, printed last;
optionally the same as JSON. Shared by the scripts in bench/."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def record(**fields) -> dict:
    return {"python": platform.python_version(), **fields,
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}


def finish(header: dict, rows: list[dict], columns: list[tuple[str, str, str]], json_path: str | None) -> None:
    """columns: (row key, heading, format spec such as `>10.3f`); the first column is left-aligned text."""
    print(json.dumps(header, indent=2))
    widths = [max(len(h), 8) + 2 for _, h, _ in columns]
    widths[0] = max(len(h) for _, h, _ in columns[:1]) + max(len(str(r[columns[0][0]])) for r in rows) + 2
    print("\n" + "".join(f"{h:<{widths[0]}}" if i == 0 else f"{h:>{w}}"
                         for i, ((_, h, _), w) in enumerate(zip(columns, widths))))
    for r in rows:
        cells = []
        for i, ((key, _, spec), w) in enumerate(zip(columns, widths)):
            value = r.get(key)
            text = format(value, spec) if value is not None and spec else str(value if value is not None else "n/a")
            cells.append(f"{text:<{w}}" if i == 0 else f"{text:>{w}}")
        print("".join(cells))
    if json_path:
        Path(json_path).write_text(json.dumps({**header, "results": rows}, indent=2) + "\n")
