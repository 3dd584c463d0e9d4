"""A hand-written reference for one SFT optimizer step on a tiny OLMoE, written from open-instruct's finetune.py
(the published OLMoE SFT) and TRL's token mean, to hold the trainers' gradients against.

Every micro-batch is one row (per_device_train_batch_size 1), so the router terms do not depend on how a launcher
groups rows, and one step consumes every row of the dataset once, whichever rank gets which:

    sum:  loss = sum over rows r of (CE_sum_r + lb * aux_r + z * zloss_r) / (accumulation x processes)
    mean: loss = sum_r CE_sum_r / (labelled tokens of all rows) + sum_r (lb * aux_r + z * zloss_r) / (accum x procs)

CE_sum_r: the row's summed next-token cross-entropy over labelled tokens; aux_r: the model's own load-balancing loss
(`outputs.aux_loss`, what open-instruct's ablation added); zloss_r: mean over layers and tokens of
logsumexp(router logits)^2. Then gradient clipping to `max_norm` as torch and DeepSpeed do it
(g * max_norm / (norm + 1e-6) when that is below 1) and one SGD step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml


def write_fixture(folder: Path, num_rows: int = 4, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """A tiny OLMoE with the demo tokenizer saved as a model folder (in `dtype`; the recipe loads it as saved), and
    `num_rows` chat rows of different lengths (with whitespace the recipe's `data.strip` removes)."""
    from adapt.config.sections import ModelSection
    from adapt.data.tokenizer import load_tokenizer
    from conftest import tiny_olmoe

    tokenizer = load_tokenizer(ModelSection(tokenizer="builtin:demo"))
    model = tiny_olmoe(seed=3, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    model.to(dtype).save_pretrained(folder / "init")
    tokenizer.save_pretrained(folder / "init")
    words = ["abc", "hello", "reverse", "xyzzy", "moe", "router", "expert", "token"]
    with open(folder / "rows.jsonl", "w", encoding="utf-8") as f:
        for i in range(num_rows):
            prompt = " ".join(words[: 2 + i]) + "  "
            answer = " " + " ".join(reversed(words[: 1 + 2 * i]))
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return folder / "init", folder / "rows.jsonl"


def recipe(folder: Path, *, reduction: str, lb: float, z: float, accumulation: int, max_norm: float = 1.0,
           lr: float = 0.05, out: str = "run", model: dict | None = None, **extra) -> Path:
    """The SFT recipe of the fixture: one optimizer step of plain SGD on all rows."""
    raw = {
        "stage": "sft",
        "model": {"name_or_path": str(folder / "init"), "dtype": "auto", "chat_template": "tulu", **(model or {})},
        "data": {"sources": [{"path": str(folder / "rows.jsonl")}], "cache": False},
        "router": {"load_balancing_weight": lb, "z_loss_weight": z},
        "training": {"output_dir": str(folder / out), "loss_reduction": reduction, "max_steps": 1,
                     "per_device_train_batch_size": 1, "gradient_accumulation_steps": accumulation,
                     "optim": "sgd", "learning_rate": lr, "lr_scheduler_type": "constant", "weight_decay": 0.0,
                     "max_grad_norm": max_norm, "max_length": 64, "logging_steps": 1, "save_strategy": "no",
                     "report_to": [], "bf16": False, "disable_tqdm": True, "seed": 0, **extra},
    }
    path = folder / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def tokenized_rows(recipe_path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows as the toolkit tokenizes them (token-level fidelity is tested elsewhere: tests/test_fidelity.py)."""
    from adapt.config import load_recipe
    from adapt.data.prepare import prepare_data
    from adapt.data.tokenizer import load_tokenizer

    config = load_recipe(recipe_path, check_output=False)
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer, use_cache=False)
    return [(torch.tensor(r["input_ids"]), torch.tensor(r["labels"])) for r in data.train]


def _z_loss(router_logits) -> torch.Tensor:
    return torch.stack([torch.logsumexp(logits, dim=-1).square().mean() for logits in router_logits]).mean()


def reference_step(init: Path, rows, *, reduction: str, lb: float, z: float, accum_x_procs: int,
                   max_norm: float, lr: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """(weights after the step, pre-clip gradient, pre-clip gradient norm)."""
    from transformers import OlmoeForCausalLM

    model = OlmoeForCausalLM.from_pretrained(init, dtype="auto", experts_implementation="eager")  # float64 too
    labelled = sum(int((labels[1:] != -100).sum()) for _, labels in rows)
    for input_ids, labels in rows:
        out = model(input_ids=input_ids[None], output_router_logits=True, use_cache=False)
        log_probs = torch.log_softmax(out.logits[0, :-1], dim=-1)
        target, keep = labels[1:], labels[1:] != -100
        ce_sum = -log_probs[keep].gather(1, target[keep][:, None]).sum()
        router = lb * out.aux_loss + z * _z_loss(out.router_logits)
        if reduction == "sum":
            loss = (ce_sum + router) / accum_x_procs
        else:
            loss = ce_sum / labelled + router / accum_x_procs
        loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    norm = float(torch.sqrt(sum(g.double().square().sum() for g in grads.values())))
    scale = min(1.0, max_norm / (norm + 1e-6))
    with torch.no_grad():
        after = {name: (p - lr * scale * p.grad).detach() for name, p in model.named_parameters()}
    return after, grads, norm


def logged(run_dir: Path, key: str) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r[key] for r in rows if key in r and "train_runtime" not in r)


def max_difference(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert set(reference) <= set(state), sorted(set(reference) - set(state))[:4]
    return max(float((state[k].float() - reference[k]).abs().max()) for k in reference)
