"""K-quants (`--type q4_k_m|q5_k_m|q6_k`), made by llama.cpp's own quantizer, never by our arithmetic.

The export first writes the run at the weights' own dtype (f32, bf16 or f16: lossless, as `--type auto`), then
`llama_cpp.llama_model_quantize` (the `llama-quantize` tool's library call, from the installed llama-cpp-python)
turns that file into the K-quant. So every choice a user of `llama-quantize` gets is the one made here: the mixes
(`_M`: some attention-value and FFN-down tensors one step up, Q6_K output), the router (`ffn_gate_inp`) and the
norms left unquantized, and the fallbacks for a tensor whose rows are not a multiple of a K-quant's 256-value super
block (Q5_0/Q5_1/Q8_0/F16, llama.cpp picks). The kinds each tensor ended as are read back from the file and
reported, so a "q4_k_m" of a narrow model that is really mostly Q5_0 says so.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from adapt.export.architectures import ExportError

# --type -> llama.cpp's `llama_ftype` constant (llama_cpp.LLAMA_FTYPE_*), as `llama-quantize` names them
KQUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
           "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def require_quantizer(type_: str) -> None:
    """Refused before anything loads: the K-quants need llama.cpp itself."""
    import importlib.util

    if type_ in KQUANTS and importlib.util.find_spec("llama_cpp") is None:
        raise ExportError(f"--type {type_} is made by llama.cpp's quantizer, from llama-cpp-python: "
                          "pip install -e '.[gguf]' (it builds llama.cpp from source), or export f16 and run "
                          "llama-quantize yourself")


def quantize(source: Path, outfile: Path, type_: str) -> None:
    """llama.cpp's quantizer from `source` (a float GGUF) into `outfile`; raises ExportError if it fails."""
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(False)  # llama.cpp logs a line per tensor; errors still print, and the kinds are reported
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, KQUANTS[type_])
    params.nthread = os.cpu_count() or 1
    failed = llama_cpp.llama_model_quantize(str(source).encode(), str(outfile).encode(), params)
    if failed:
        raise ExportError(f"llama.cpp's quantizer failed on {source} (code {failed}); nothing was written")


def tensor_kinds(path: Path) -> Counter:
    """How many tensors of the file are stored in each kind (Q4_K, Q6_K, F32, ...)."""
    import gguf

    return Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)
