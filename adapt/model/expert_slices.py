"""Train only the selected experts of transformers 5's fused expert weights, exactly (ESFT; the selection itself is
adapt/model/expert_selection.py).

Design note. transformers 5 keeps each MoE layer's routed experts as 3-D parameters (`experts.gate_up_proj
[E, 2I, H]`, `experts.down_proj [E, H, I]`; gpt-oss also `gate_up_proj_bias [E, 2I]`, `down_proj_bias [E, H]`).
`requires_grad` is per tensor, so it cannot freeze a slice; zeroing the unselected experts' gradient is not enough
either, because AdamW's decoupled weight decay (`p -= lr * wd * p`) moves every parameter it holds whatever its
gradient, momentum keeps moving it after its gradient stops, and the optimizer would keep two fp32 moments (and the
gradient buffer) for all E experts. So the fused parameter is frozen, and beside it each wrapped experts module
holds one trainable parameter per fused tensor with only the selected experts' slices (`gate_up_proj_selected
[S, 2I, H]`, in the selected ids' order, `esft_index [S]`). Gradients, optimizer state and weight decay then exist
for the selected slices only, and an unselected expert cannot move: it is not in any parameter the optimizer has.

The forward recomposes the weight the experts' code reads: the module's class is swapped for a subclass whose
`gate_up_proj` (etc.) is a property returning `SelectedSlices.apply(selected, fused, index)`. That function writes
the selected slices into the fused tensor's storage (through `.data`, so autograd's version counters do not see an
in-place change of a saved tensor: the values written are the ones already there whenever the weight is read twice
between optimizer steps) and returns the fused tensor itself, so no second copy of the experts is made or saved for
the backward; its backward hands the selected rows of the weight's gradient to `selected`. Every experts path
(grouped_mm, eager, batched_mm, adapt_fused) reads the weight through the attribute, so all of them work unchanged.
Why not `torch.nn.utils.parametrize`: it renames the fused parameter (`parametrizations.gate_up_proj.original`)
and its forward returns a new tensor, one full copy of every layer's experts kept alive for the backward.
What it costs (bench/esft_memory.py): one extra copy of the selected slices, and in the backward one layer's full
fused-weight gradient for a moment (the experts' kernels compute all E rows before `index_select` takes S), freed
before the next layer's.

Saving: state dicts are the family's plain layout. A state-dict pre-hook writes the selected slices into the fused
tensor (the last optimizer step has not been through a forward yet), a post-hook drops the `_selected` entries, and
a load pre-hook fills them from the fused tensor it loads, so `save_pretrained`, Trainer and DeepSpeed ZeRO-2
checkpoints, and resuming from them need nothing else; `unwrap` puts the model back as it was (the stage calls it
before saving). ZeRO-3 is refused by the recipe check: it partitions the fused tensor this writes into.
"""

from __future__ import annotations

import torch

from adapt.config.families import Family
from adapt.model.expert_selection import ExpertSelectionError
from adapt.model.routing import find_backbone, router_modules

SUFFIX = "_selected"
INDEX = "esft_index"
_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


class SelectedSlices(torch.autograd.Function):
    """The fused expert tensor [E, ...] holding `selected` [S, ...] at rows `index` [S]; gradient to `selected`."""

    @staticmethod
    def forward(ctx, selected_S, fused_E, index_S):
        fused_E.data.index_copy_(0, index_S, selected_S.detach())
        ctx.save_for_backward(index_S)
        return fused_E.view_as(fused_E)

    @staticmethod
    def backward(ctx, grad_E):
        (index_S,) = ctx.saved_tensors
        return grad_E.index_select(0, index_S), None, None


def _composed(name: str) -> property:
    def weight(self):
        return SelectedSlices.apply(self._parameters[name + SUFFIX], self._parameters[name], self._buffers[INDEX])
    return property(weight)


def _esft_class(cls: type, names: tuple[str, ...]) -> type:
    """A subclass of the family's experts class whose fused tensors are read through `SelectedSlices`."""
    key = (cls, names)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Selected{cls.__name__}", (cls,), {n: _composed(n) for n in names} | {
            "_esft_names": names, "_esft_base": cls})
    return _CLASSES[key]


def fused_names(experts: torch.nn.Module, num_experts: int) -> tuple[str, ...]:
    """The module's own tensors with one row per expert (weights and, for gpt-oss, biases)."""
    return tuple(n for n, p in experts.named_parameters(recurse=False) if p.dim() >= 1 and p.shape[0] == num_experts)


def wrap(experts: torch.nn.Module, expert_ids: list[int], num_experts: int) -> None:
    """Freeze the module's fused tensors and train only `expert_ids`' slices (module note)."""
    names = fused_names(experts, num_experts)
    index_S = torch.tensor(sorted(expert_ids), dtype=torch.long, device=experts._parameters[names[0]].device)
    for name in names:
        fused = experts._parameters[name]
        fused.requires_grad_(False)
        experts.register_parameter(name + SUFFIX, torch.nn.Parameter(fused.detach()[index_S].clone()))
    experts.register_buffer(INDEX, index_S, persistent=False)
    experts.__class__ = _esft_class(type(experts), names)
    experts._esft_handles = [experts.register_state_dict_pre_hook(_sync),
                             experts.register_state_dict_post_hook(_drop_selected),
                             experts.register_load_state_dict_pre_hook(_fill_selected)]


def _sync(module, prefix, keep_vars) -> None:
    with torch.no_grad():
        for name in module._esft_names:
            module._parameters[name].data.index_copy_(0, module._buffers[INDEX], module._parameters[name + SUFFIX])


def _drop_selected(module, state_dict, prefix, local_metadata) -> None:
    for name in module._esft_names:
        state_dict.pop(prefix + name + SUFFIX, None)


def _fill_selected(module, state_dict, prefix, *args) -> None:
    for name in module._esft_names:
        if prefix + name in state_dict and prefix + name + SUFFIX not in state_dict:
            index_S = module._buffers[INDEX].to(state_dict[prefix + name].device)
            state_dict[prefix + name + SUFFIX] = state_dict[prefix + name].index_select(0, index_S)


def unwrap(model: torch.nn.Module) -> int:
    """Put every wrapped experts module back as transformers built it, its fused tensors holding the trained
    slices; returns how many there were."""
    wrapped = [m for m in model.modules() if hasattr(m, "_esft_names")]
    for module in wrapped:
        _sync(module, "", False)
        for handle in module._esft_handles:
            handle.remove()
        for name in module._esft_names:
            del module._parameters[name + SUFFIX]
        del module._buffers[INDEX]
        module.__class__ = module._esft_base
        del module._esft_handles
    return len(wrapped)


def is_wrapped(model: torch.nn.Module) -> bool:
    return any(hasattr(m, "_esft_names") for m in model.modules())


def experts_modules(model: torch.nn.Module, f: Family) -> dict[int, torch.nn.Module]:
    """MoE layer number -> the layer's routed-experts module (`layers.N.<moe block>.experts`)."""
    found = {}
    for name, module in find_backbone(model).named_modules():
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "layers" and parts[2] == f.moe_block and parts[3] == "experts":
            found[int(parts[1])] = module
    return found


def freeze(model: torch.nn.Module, f: Family, selected: dict[int, list[int]], train: list[str]) -> list[str]:
    """Everything frozen but the selected experts' slices and the parts named in `train` (the recipe's
    `experts.train`); returns the lines the run logs (trainable and total parameters)."""
    num_experts = getattr(model.config.get_text_config(), f.experts_attr)
    modules = experts_modules(model, f)
    for layer, ids in selected.items():
        if layer not in modules:
            raise ExpertSelectionError(f"experts.experts: layer {layer} is not an MoE layer of this {f.model_type} "
                                       f"model (its MoE layers: {', '.join(map(str, sorted(modules)))}); name those")
        if any(not 0 <= e < num_experts for e in ids) or len(set(ids)) != len(ids):
            raise ExpertSelectionError(f"experts.experts: layer {layer} names {ids}, but the experts are 0.."
                                       f"{num_experts - 1}, each once; fix the ids")
    model.requires_grad_(False)
    for layer, ids in sorted(selected.items()):
        if ids:  # a layer with nothing selected keeps its fused tensors as they are, frozen
            wrap(modules[layer], ids, num_experts)
    for part in train:
        params = part_parameters(model, f, part)
        if not params:
            raise ExpertSelectionError(f"experts.train: `{part}` matches nothing in this {f.model_type} model; "
                                       "remove it")
        for p in params:
            p.requires_grad_(True)
    total = sum(p.numel() for n, p in model.named_parameters() if not n.endswith(SUFFIX))
    experts = sum(p.numel() for n, p in model.named_parameters() if n.endswith(SUFFIX))
    others = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.endswith(SUFFIX))
    slots = sum(len(ids) for ids in selected.values())
    return [f"ESFT: {experts + others:,} of {total:,} parameters trainable ({100 * (experts + others) / total:.3f}%)",
            f"  selected experts: {slots} of {len(modules) * num_experts} ({experts:,} parameters)",
            f"  also trained ({', '.join(train) or 'nothing'}): {others:,}"]


def part_parameters(model: torch.nn.Module, f: Family, part: str) -> list[torch.nn.Parameter]:
    """The parameters of one `experts.train` part (adapt/config/sections.py ESFT_TRAINABLE)."""
    backbone = find_backbone(model)
    if part == "embeddings":
        return list(model.get_input_embeddings().parameters())
    if part == "lm_head":
        head = model.get_output_embeddings()
        return list(head.parameters()) if head is not None else []
    if part == "router":
        return [p for _, module in router_modules(backbone) for p in module.parameters()]
    if part == "norms":
        return [p for n, p in model.named_parameters() if "norm" in n.rsplit(".", 1)[0].rsplit(".", 1)[-1]]
    wanted = {"attention": {"self_attn"}, "shared_experts": {f.shared_expert, f.shared_expert_gate} - {""}}[part]
    found = []
    for name, module in backbone.named_modules():
        parts = name.split(".")
        if part == "attention" and len(parts) == 3 and parts[0] == "layers" and parts[2] in wanted:
            found += list(module.parameters())
        elif len(parts) == 4 and parts[0] == "layers" and parts[2] == f.moe_block and parts[3] in wanted:
            found += list(module.parameters())
    return found
