"""`adapt export gguf RUN_DIR --outfile model.gguf [--type auto|f32|f16|bf16|q8_0|q6_k|q5_k_m|q4_k_m]`: a run folder (a
LoRA run merged into its base first, the merge proven: adapt.model.lora.merge_proven) as one GGUF file that llama.cpp
loads.

What can be refused is checked before the model is loaded: the run folder is complete, the family is in the
architecture table and its configuration is one llama.cpp runs as transformers does, the tokenizer is one llama.cpp
reproduces and fits the model's vocabulary, the output does not exist yet. A tensor without a llama.cpp name is found
once the weights are loaded, still before anything is written.

The file is streamed tensor by tensor (header and tensor index first, then each tensor converted as it is written),
so memory holds the model and one converted tensor, and it is written under a temporary name and renamed at the
end: a file at `--outfile` is always complete.

Tensors: every tensor of the model's state dict is written under llama.cpp's name (gguf's tensor-name map), after
the family row's own transform (adapt/export/gguf_families.py: fused experts split into llama.cpp's gate/up/down
tensors, permutations, MLA's split, ...), or the export stops. As llama.cpp's converter does, 1-D tensors, norms,
biases and the router stay float32 in every type, and a q8_0 tensor whose rows are not a multiple of 32 is float16.
K-quants are made from the float file by llama.cpp's quantizer (adapt/export/quantize.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from adapt.export.architectures import ExportError, architecture
from adapt.export.gguf_vocab import check_vocab_size, read_tokenizer_json, write_vocab
from adapt.export.quantize import KQUANTS, quantize, require_quantizer, tensor_kinds
from adapt.runfolder import unusable_reason

TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
         "q8_0": ("Q8_0", "MOSTLY_Q8_0")}


@dataclass
class Exported:
    path: Path
    type: str
    tensors: int
    bytes: int
    seconds: float
    kinds: dict  # how many tensors are stored in each kind ({"Q4_K": 12, "F32": 9, ...}), read back from the file


@dataclass
class ExportPlan:
    """What check_export found, all before any weights load: the model's config, its architecture row, the type
    (`auto` resolved), and the run's tokenizer with its tokenizer.json."""

    run: Path
    config: dict
    arch: object  # architectures.GGUFArchitecture
    type: str
    tokenizer: object
    tokenizer_json: dict


@dataclass
class PlannedTensor:
    name: str  # llama.cpp's
    source: object  # a torch tensor (a view of the model's weights)
    qtype: object  # gguf.GGMLQuantizationType


def check_export(run: Path, outfile: Path, type_: str, force: bool) -> ExportPlan:
    """Everything that can be refused before the weights load; raises ExportError."""
    from transformers import AutoConfig, AutoTokenizer

    from adapt.model.lora import is_adapter_folder, root_base  # imports torch: keep `adapt export --help` light

    if type_ not in TYPES and type_ not in KQUANTS and type_ != "auto":
        raise ExportError(f"--type {type_}: choose one of auto, {', '.join([*TYPES, *KQUANTS])}")
    require_quantizer(type_)
    if not run.is_dir():
        raise ExportError(f"{run}: no such run folder")
    reason = unusable_reason(run)  # an incomplete run, corrupt or truncated weights, NaN values
    if reason:
        raise ExportError(f"{run}: cannot be exported: {reason}")
    if outfile.is_dir():
        raise ExportError(f"{outfile} is a folder; give --outfile a file path (e.g. {outfile / 'model.gguf'})")
    if outfile.exists() and not force:
        raise ExportError(f"{outfile} exists; choose another --outfile or pass --force to replace it")
    source = root_base(str(run)) if is_adapter_folder(str(run)) else str(run)
    if not source:
        raise ExportError(f"{run}/adapter_config.json: no base_model_name_or_path, so there is no base to merge into")
    try:
        config = AutoConfig.from_pretrained(source).to_dict()
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ExportError(f"{run}: cannot read the model's config from {source} ({reason})") from None
    arch = architecture(config.get("model_type"))
    refused = arch.refuse(config)
    if refused:
        raise ExportError(f"{run}: {refused}; llama.cpp would run this model differently from transformers")
    spec = read_tokenizer_json(run)
    tokenizer = AutoTokenizer.from_pretrained(run)
    check_vocab_size(tokenizer, config["vocab_size"])
    return ExportPlan(run, config, arch, resolve_type(type_, config), tokenizer, spec)


def resolve_type(type_: str, config: dict) -> str:
    """`auto`: the weights' own dtype (f32, bf16 or f16), so the file holds exactly the run's numbers."""
    if type_ != "auto":
        return type_
    saved = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(saved, "f32")


def load_weights(run: Path):
    """The model as the run defines it: a LoRA run merged into its base (PEFT), weights in their saved dtype."""
    from transformers import AutoModelForCausalLM

    # imports torch: keep `adapt export --help` light
    from adapt.model.lora import MergeMismatch, is_adapter_folder, load_merged_adapter

    if is_adapter_folder(str(run)):
        try:
            return load_merged_adapter(str(run), "auto")  # proven against base + adapter (merge_proven)
        except MergeMismatch as e:
            raise ExportError(f"{e}; nothing was exported") from None
    return AutoModelForCausalLM.from_pretrained(run, dtype="auto")


def plan_tensors(state: dict, config: dict, arch, type_: str) -> list[PlannedTensor]:
    """Every tensor under llama.cpp's name: the family's row turns the state dict into the names gguf's map knows
    (architectures.py), the map gives llama.cpp's; a tensor without one stops the export."""
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_arch), config["num_hidden_layers"])
    wanted = getattr(gguf.GGMLQuantizationType, TYPES[type_][0])
    planned, unmapped = [], []
    for key, tensor in arch.tensors(state, config).items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            unmapped.append(key)
            continue
        planned.append(PlannedTensor(name, tensor, _qtype(name, tuple(tensor.shape), wanted)))
    if unmapped:
        raise ExportError(f"{len(unmapped)} tensors have no llama.cpp name ({', '.join(unmapped[:3])}...); the GGUF "
                          "would miss them, so nothing was written")
    return planned


def _qtype(name: str, shape: tuple, wanted):
    """As llama.cpp's converter (conversion/base.py `prepare_tensors`): 1-D tensors, norms, biases and the routers
    (`ffn_gate_inp`, the shared expert's `ffn_gate_inp_shexp`) stay float32."""
    import gguf

    kind = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return kind.F32
    if ".ffn_gate_inp." in name or ".ffn_gate_inp_shexp." in name:
        return kind.F32
    if wanted == kind.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[kind.Q8_0][0]:
        return kind.F16
    return wanted


def _converted(tensor, qtype):
    import gguf
    import numpy as np

    array = np.ascontiguousarray(tensor.detach().float().cpu().numpy())
    return array if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(array, qtype)


def _info(planned: PlannedTensor) -> tuple[tuple, object, int]:
    """(shape as the writer wants it, numpy dtype, bytes) of a tensor once converted, without converting it."""
    import gguf
    import numpy as np

    shape, kind = tuple(planned.source.shape), gguf.GGMLQuantizationType
    elements = int(np.prod(shape))
    if planned.qtype == kind.F32:
        return shape, np.dtype(np.float32), 4 * elements
    if planned.qtype == kind.F16:
        return shape, np.dtype(np.float16), 2 * elements
    byte_shape = gguf.quant_shape_to_byte_shape(shape, planned.qtype)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape))


def export_gguf(run_dir: str | Path, outfile: str | Path, type_: str = "auto", force: bool = False) -> Exported:
    outfile = Path(outfile)
    if not outfile.parent.is_dir():
        raise ExportError(f"{outfile.parent}: no such folder for --outfile")
    return write_gguf(check_export(Path(run_dir), outfile, type_, force), outfile)


def write_gguf(plan: ExportPlan, outfile: Path) -> Exported:
    """Write the file under a temporary name and rename it at the end; a K-quant is made from the float file by
    llama.cpp's quantizer (adapt/export/quantize.py), and the float file is removed."""
    started = time.perf_counter()
    stored = resolve_type("auto", plan.config) if plan.type in KQUANTS else plan.type
    partial = outfile.with_name(outfile.name + ".partial")
    source = outfile.with_name(outfile.name + ".float.partial")
    try:
        if plan.type in KQUANTS:
            tensors = write_float_file(plan, stored, source)  # the weights are freed before llama.cpp quantizes
            quantize(source, partial, plan.type)
        else:
            tensors = write_float_file(plan, stored, partial)
        os.replace(partial, outfile)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.unlink(missing_ok=True)
    return Exported(outfile, plan.type, tensors, outfile.stat().st_size, time.perf_counter() - started,
                    dict(tensor_kinds(outfile)))


def write_float_file(plan: ExportPlan, type_: str, path: Path) -> int:
    """Load the weights, map every tensor, then stream them into `path` as `type_` (one of TYPES); the tensor count."""
    import gguf
    import torch

    with torch.no_grad():
        planned = plan_tensors(load_weights(plan.run).state_dict(), plan.config, plan.arch, type_)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, plan.arch.gguf_arch)])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(plan.run.resolve().name)
    plan.arch.hparams(writer, plan.config)
    writer.add_file_type(getattr(gguf.LlamaFileType, TYPES[type_][1]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, plan.tokenizer, plan.tokenizer_json, plan.config["vocab_size"])
    for p in planned:
        shape, dtype, nbytes = _info(p)
        writer.add_tensor_info(p.name, shape, dtype, nbytes, raw_dtype=p.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for p in planned:
        writer.write_tensor_data(_converted(p.source, p.qtype))
    writer.close()
    return len(planned)
