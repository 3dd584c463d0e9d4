"""What llama.cpp needs to know of each model family, in one table: its architecture name in `gguf`, the
hyperparameters it reads, the configurations it would run differently from transformers (refused), and the tensors
under the names llama.cpp's converter gives them. The functions of each row, and the design note of what is written
per family and why (with the llama.cpp file each fact comes from), are in adapt/export/gguf_families.py. A family is
added by a row here and a case in tests/test_export_families.py.

No pre-tokenizer here: it follows the run's tokenizer, not the family (a family's model may be fine-tuned with
another tokenizer), and is named from the tokenizer.json's regexes (adapt/export/gguf_pretokenizers.py).
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
    # (state dict, config.json) -> {name gguf's tensor-name map knows: tensor}, split/permuted as the converter does
    tensors: Callable[[dict, dict], dict] = f.hf_tensors


ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "olmoe": GGUFArchitecture("OLMOE", f.olmoe_hparams, f.olmoe_refuse),
    "qwen3_moe": GGUFArchitecture("QWEN3MOE", f.qwen3_moe_hparams, f.qwen3_moe_refuse),
    "qwen2_moe": GGUFArchitecture("QWEN2MOE", f.qwen2_moe_hparams, f.qwen2_moe_refuse),
    "mixtral": GGUFArchitecture("LLAMA", f.mixtral_hparams, f.mixtral_refuse, f.llama_tensors),
    "deepseek_v3": GGUFArchitecture("DEEPSEEK2", f.deepseek_v3_hparams, f.deepseek_v3_refuse, f.deepseek_v3_tensors),
    "glm4_moe": GGUFArchitecture("GLM4_MOE", f.glm4_moe_hparams, f.glm4_moe_refuse, f.glm4_moe_tensors),
    "gpt_oss": GGUFArchitecture("GPT_OSS", f.gpt_oss_hparams, f.gpt_oss_refuse, f.gpt_oss_tensors),
    "granitemoe": GGUFArchitecture("GRANITE_MOE", f.granitemoe_hparams, f.granitemoe_refuse, f.granitemoe_tensors),
}


def architecture(model_type: str | None) -> GGUFArchitecture:
    """The row for a model type, or a one-line error naming what is known."""
    if model_type not in ARCHITECTURES:
        raise ExportError(f"model_type {model_type!r}: no GGUF export for it yet (known: {', '.join(ARCHITECTURES)}); "
                          "a family is added by a row in adapt/export/architectures.py and a test")
    return ARCHITECTURES[model_type]


class ExportError(Exception):
    """A problem the user can fix; the command line prints it as one line, and nothing was written."""
