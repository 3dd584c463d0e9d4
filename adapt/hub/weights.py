"""What a model folder's safetensors headers say, read without loading any tensor data (the card's parameter count,
the publishing step's resharding)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def tensor_headers(path: Path) -> dict[str, dict]:
    """A safetensors file's tensor entries (dtype, shape, data_offsets), read from its header without the data."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    return dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))


def count_parameters(folder: Path) -> int:
    return sum(math.prod(t["shape"]) for f in folder.glob("*.safetensors") for t in tensor_headers(f).values())
