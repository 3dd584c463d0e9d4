"""What llama.cpp needs to know of each model family, in one table: its architecture name in `gguf`, the
hyperparameters it reads, the configurations it would run differently from transformers (refused), the tensors
under the names llama.cpp's converter gives them, and the pre-tokenizer written for the vocabulary. The functions
of each row, and the design note of what is written per family and why (with the llama.cpp file each fact comes
from), are in adapt/export/gguf_families.py. A family is added by a row here and a case in
tests/test_export_families.py.

The pre-tokenizer follows the run's tokenizer, not the family: the export reproduces only byte-level BPE with the
GPT-2 regex (adapt/export/gguf_vocab.py), which llama.cpp runs as "olmo" whatever the family; the pre-tokenizer
llama.cpp's converter would pick for a family's own tokenizer ("qwen2", "deepseek-v3", "gpt-4o", ...) is a
different regex and would tokenize that tokenizer's text differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapt.export import gguf_families as f


@dataclass(frozen=True)
class GGUFArchitecture:
    gguf_arch: str  # the member of gguf.MODEL_ARCH
    hparams: Callable[[Any, dict], None]  # (GGUFWriter, config.json) -> writes the architecture's keys
    refuse: Callable[[dict], str | None]  # a config llama.cpp would run differently: why, or None
    pre_tokenizer: str  # llama.cpp's pre-tokenizer for the vocabulary (module note)
    # (state dict, config.json) -> {name gguf's tensor-name map knows: tensor}, split/permuted as the converter does
    tensors: Callable[[dict, dict], dict] = f.hf_tensors


GPT2_REGEX = "olmo"  # llama.cpp's pre-tokenizer with the GPT-2 regex (module note)

ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "olmoe": GGUFArchitecture("OLMOE", f.olmoe_hparams, f.olmoe_refuse, GPT2_REGEX),
    "qwen3_moe": GGUFArchitecture("QWEN3MOE", f.qwen3_moe_hparams, f.qwen3_moe_refuse, GPT2_REGEX),
    "qwen2_moe": GGUFArchitecture("QWEN2MOE", f.qwen2_moe_hparams, f.qwen2_moe_refuse, GPT2_REGEX),
    "mixtral": GGUFArchitecture("LLAMA", f.mixtral_hparams, f.mixtral_refuse, GPT2_REGEX, f.llama_tensors),
    "deepseek_v3": GGUFArchitecture("DEEPSEEK2", f.deepseek_v3_hparams, f.deepseek_v3_refuse, GPT2_REGEX,
                                    f.deepseek_v3_tensors),
    "glm4_moe": GGUFArchitecture("GLM4_MOE", f.glm4_moe_hparams, f.glm4_moe_refuse, GPT2_REGEX, f.glm4_moe_tensors),
    "gpt_oss": GGUFArchitecture("GPT_OSS", f.gpt_oss_hparams, f.gpt_oss_refuse, GPT2_REGEX, f.gpt_oss_tensors),
    "granitemoe": GGUFArchitecture("GRANITE_MOE", f.granitemoe_hparams, f.granitemoe_refuse, GPT2_REGEX,
                                   f.granitemoe_tensors),
}


def architecture(model_type: str | None) -> GGUFArchitecture:
    """The row for a model type, or a one-line error naming what is known."""
    if model_type not in ARCHITECTURES:
        raise ExportError(f"model_type {model_type!r}: no GGUF export for it yet (known: {', '.join(ARCHITECTURES)}); "
                          "a family is added by a row in adapt/export/architectures.py and a test")
    return ARCHITECTURES[model_type]


class ExportError(Exception):
    """A problem the user can fix; the command line prints it as one line, and nothing was written."""
