"""The OLMoE recipe pairs: `published/` holds every value of the released adaptation (open-instruct's code of August
2024 and the run logs allenai/OLMoE publishes), and the default pair differs from it only where
recipes/olmoe-1b-7b/README.md says."""

import pytest

from adapt.cli import main as adapt
from adapt.config import load_recipe
from conftest import REPO

OLMOE = REPO / "recipes/olmoe-1b-7b"
GPUS = 32  # the real runs: 4 nodes x 8 H100s

# What the code and logs of the released OLMoE-1B-7B-Instruct did, field by field.
PUBLISHED_SFT = {
    "model.name_or_path": "allenai/OLMoE-1B-7B-0924", "model.dtype": "bfloat16", "model.chat_template": "tulu",
    "model.add_bos": True,  # --add_bos, with EOS as BOS (the tokenizer has none)
    "data.sources.0.hub": "allenai/tulu-v3.1-mix-preview-4096-OLMoE", "data.strip": True,
    "data.train_assistant_newline": True,  # the label mask one token early under --add_bos
    "router.load_balancing_weight": 0.0, "router.z_loss_weight": 0.0,  # output_router_logits=False
    "loss_reduction": "sum", "max_grad_norm": 1.0,  # --reduce_loss sum, DeepSpeed gradient_clipping 1.0
    "learning_rate": 2e-5, "lr_scheduler_type": "linear", "warmup_steps": 0.03, "weight_decay": 0.0,
    "num_train_epochs": 2, "max_length": 4096, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
    "bf16": True, "data.assistant_only_loss": True, "packing": False, "parallel.deepspeed": "zero3",
}
PUBLISHED_DPO = {
    "model.dtype": "bfloat16", "model.chat_template": "tulu", "model.add_bos": True,
    "data.sources.0.hub": "argilla/ultrafeedback-binarized-preferences-cleaned", "data.strip": True,
    "router.load_balancing_weight": 0.0, "router.z_loss_weight": 0.0,  # logits only
    "loss_reduction": "mean", "max_grad_norm": 1.0, "beta": 0.1, "loss_type": ["sigmoid"],
    "learning_rate": 5e-7, "lr_scheduler_type": "linear", "warmup_steps": 0.1, "weight_decay": 0.0,
    "num_train_epochs": 3, "max_length": 4096, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
    "bf16": True, "parallel.deepspeed": "zero3",
}
# The default pair: the paper's Table 7 "with load balancing" ablation plus the z-loss, and its own run folders.
DEFAULT_CHANGES = {
    "sft": {"router.load_balancing_weight": 0.001, "router.z_loss_weight": 0.0001,
            "training.output_dir": "runs/olmoe-1b-7b/sft"},
    "dpo": {"router.load_balancing_weight": 0.001, "router.z_loss_weight": 0.0001,
            "training.output_dir": "runs/olmoe-1b-7b/dpo", "model.name_or_path": "./runs/olmoe-1b-7b/sft"},
}


def value(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return getattr(node, "value", node)  # enums (lr_scheduler_type) as their value


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load(name: str):
    return load_recipe(OLMOE / name, check_paths=False, check_hardware=False)


@pytest.mark.parametrize("name, published", [("published/sft.yaml", PUBLISHED_SFT),
                                             ("published/dpo.yaml", PUBLISHED_DPO)])
def test_published_recipes_hold_every_published_value(name, published):
    config = load(name)
    assert {k: value(config, k) for k in published} == published
    assert config.deepspeed["zero_optimization"]["stage"] == 3 and "expert_parallel" not in config.deepspeed


def test_published_batch_layout_and_the_summed_loss_scale():
    sft, dpo = load("published/sft.yaml"), load("published/dpo.yaml")
    assert sft.per_device_train_batch_size * sft.gradient_accumulation_steps * GPUS == 128  # the SFT log
    assert sft.gradient_accumulation_steps * GPUS == 64  # what the summed gradient is divided by
    assert dpo.per_device_train_batch_size * dpo.gradient_accumulation_steps * GPUS == 32  # the DPO log
    assert sft.average_tokens_across_devices is False  # a sum is not rescaled by a token count


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_default_pair_differs_from_published_only_where_documented(stage):
    published = flat(load(f"published/{stage}.yaml").resolved_recipe())
    default = flat(load(f"{stage}.yaml").resolved_recipe())
    changed = {k: default[k] for k in default if default[k] != published.get(k)}
    assert changed == DEFAULT_CHANGES[stage]
    assert published.keys() == default.keys()


@pytest.mark.parametrize("name", ["sft.yaml", "dpo.yaml", "published/sft.yaml", "published/dpo.yaml"])
def test_adapt_check_passes(name, capsys):
    # The DPO recipes start from their SFT run's folder, which exists once that run has finished.
    adapt(["check", "--config", str(OLMOE / name), *(["--skip-path-checks"] if "dpo" in name else [])])
    assert capsys.readouterr().out.startswith("ok: ")


def test_recipe_readme_gives_table_7():
    readme = (OLMOE / "README.md").read_text()
    for number in ("52.8", "57.1", "54.0", "57.7"):  # with / without load balancing, SFT / DPO averages
        assert number in readme
    assert "published/sft.yaml" in readme and "published/dpo.yaml" in readme
