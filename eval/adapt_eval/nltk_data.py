"""nltk's `punkt_tab` data for IFEval's checker, found offline.

nltk downloads it from GitHub on first use, which fails without network (and lm-eval then scores 64 of the 541
IFEval prompts as errors). No Debian package ships it; the PyPI wheel of `llama-index-core` (MIT) bundles it, so
`make` installs that wheel without its dependencies into the virtualenv (`$VENV/adapt-nltk`) purely as a data
carrier. This module points nltk at the first place that has it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BUNDLE = Path("llama_index") / "core" / "_static" / "nltk_cache"
FIX = ("pip install --no-deps --target \"$(python -c 'import sys; print(sys.prefix)')/adapt-nltk\" "
       "llama-index-core==0.14.25   (or, with network: python -m nltk.downloader punkt_tab)")


def _candidates() -> list[Path]:
    roots = [os.environ.get("ADAPT_NLTK_DATA"), Path(sys.prefix) / "adapt-nltk" / BUNDLE]
    try:  # a regular llama-index install
        import importlib.util

        spec = importlib.util.find_spec("llama_index.core")
        if spec and spec.submodule_search_locations:
            roots.append(Path(list(spec.submodule_search_locations)[0]) / "_static" / "nltk_cache")
    except (ImportError, ValueError):
        pass
    return [Path(r) for r in roots if r]


def ensure_punkt_tab() -> Path | None:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
        return None
    except LookupError:
        pass
    for root in _candidates():
        if (root / "tokenizers" / "punkt_tab").is_dir():
            nltk.data.path.insert(0, str(root))
            os.environ["NLTK_DATA"] = os.pathsep.join(filter(None, [str(root), os.environ.get("NLTK_DATA")]))
            return root
    raise RuntimeError(f"IFEval needs nltk's punkt_tab data and none was found offline; install it with: {FIX}")
