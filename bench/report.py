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

    def cell(r, key, spec):
        value = r.get(key)
        return format(value, spec) if value is not None and spec else str(value if value is not None else "n/a")

    texts = [[cell(r, key, spec) for key, _, spec in columns] for r in rows]
    widths = [max([len(h), 8] + [len(t[i]) for t in texts]) + 2 for i, (_, h, _) in enumerate(columns)]
    widths[0] = max(len(h) for _, h, _ in columns[:1]) + max(len(str(r[columns[0][0]])) for r in rows) + 2
    print("\n" + "".join(f"{h:<{widths[0]}}" if i == 0 else f"{h:>{w}}"
                         for i, ((_, h, _), w) in enumerate(zip(columns, widths))))
    for row in texts:
        print("".join(f"{t:<{w}}" if i == 0 else f"{t:>{w}}" for i, (t, w) in enumerate(zip(row, widths))))
    if json_path:
        Path(json_path).write_text(json.dumps({**header, "results": rows}, indent=2) + "\n")
