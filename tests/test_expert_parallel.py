"""Expert parallelism (DeepSpeed AutoEP with the toolkit's per-family presets, adapt/parallel/autoep.py) is exact for
every family the table allows, and refused for the others:

- per family, on 2 gloo processes (tests/scripts/ep_parity.py): logits, LM loss, load-balancing loss, z-loss and
  routing statistics equal the one-process model's on the same tokens; every gradient of the first step equals the
  one-process gradient of the mean loss; the gradient norm (clipping) is the one-process norm; three AdamW steps
  follow the one-process trajectory; the folder saved from the expert-parallel model is the plain transformers
  layout with every tensor and reloads to the trained logits;
- through the stages, launched as users launch: SFT then DPO under expert parallelism 2 log the losses and router
  statistics of the same run without it, and save the same model; a run resumed from an expert-parallel checkpoint
  continues the uninterrupted run.

Tolerances are what was measured on this CPU (float32): before any step logits within 1.2e-7 and gradients within
1.5e-6 relative; after three AdamW steps logits within 2e-4 (olmoe, qwen3_moe: Adam divides float32 reduction-order
noise in gradients that are ~0 by its epsilon) and within 1e-6 for the other families.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from adapt.config.families import FAMILIES
from adapt.parallel import accelerate_config
from adapt.parallel.autoep import PRESET_PREFIX, _check_complete, register_presets, to_transformers_names
from conftest import REPO, write_recipe
from tiny_families import TINY

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
EXACT = [name for name, f in FAMILIES.items() if f.expert_parallel is None]


def test_every_family_is_verified_or_refused_with_a_deepspeed_reason():
    assert set(EXACT) == {"olmoe", "qwen3_moe", "qwen2_moe", "mixtral", "deepseek_v3", "glm4_moe", "granitemoe"}
    assert "GroupedExperts" in FAMILIES["gpt_oss"].expert_parallel  # the named DeepSpeed limitation


def test_router_jitter_is_refused_under_expert_parallelism(tmp_path):
    """Mixtral's config can ask for multiplicative router-input noise in training, which AutoEP's router does not
    apply: refused by the recipe check (and, for a loaded model, by the stage before DeepSpeed starts)."""
    from adapt.config import RecipeError, load_recipe
    from adapt.config.families import expert_parallel_config_problems

    recipe = family_recipe(tmp_path, "mixtral", "sft", output_dir=str(tmp_path / "o"))
    raw = yaml.safe_load(recipe.read_text())
    raw["model"]["config"]["router_jitter_noise"] = 0.1
    raw["parallel"]["expert_parallel_size"] = 2
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path / "jitter.yaml", yaml.safe_dump(raw)))
    assert "parallel.expert_parallel_size: the model config sets router_jitter_noise=0.1, which DeepSpeed's AutoEP " \
           "router does not apply" in str(info.value) and "\n" not in str(info.value)
    from transformers import MixtralConfig

    assert expert_parallel_config_problems(MixtralConfig(router_jitter_noise=0.1))
    assert expert_parallel_config_problems(MixtralConfig()) == []
    raw["parallel"]["expert_parallel_size"] = 1  # without expert parallelism transformers' own block runs
    load_recipe(write_recipe(tmp_path / "jitter1.yaml", yaml.safe_dump(raw)))


def test_presets_are_registered_ahead_of_deepspeeds_own():
    from deepspeed.module_inject.auto_ep_presets import registry

    register_presets()
    register_presets()  # idempotent
    names = list(registry.PRESET_MODELS)
    assert names[:len(EXACT)] == [PRESET_PREFIX + f for f in EXACT]
    for name in EXACT:  # AutoEP's own detection by model_type finds ours
        assert registry.preset_name_for_hf_model_type(name) == PRESET_PREFIX + name
    qwen2 = registry.PRESET_MODELS[PRESET_PREFIX + "qwen2_moe"]
    assert (qwen2.shared_experts_pattern, qwen2.shared_experts_gate_pattern) == ("shared_expert", "shared_expert_gate")
    granite = registry.PRESET_MODELS[PRESET_PREFIX + "granitemoe"]
    assert granite.moe_layer_pattern == r"model\.layers\.\d+\.block_sparse_moe" and granite.route_norm


def autoep_names(model, f):
    """What AutoEP's module tree holds once every rank's experts are gathered: the inverse of the export."""
    out = {}
    block, router = f".{f.moe_block}.", f".{f.moe_block}.{f.router_module}."
    for key, tensor in model.state_dict().items():
        if key.endswith(".experts.gate_up_proj"):
            half = tensor.shape[1] // 2
            out[key.replace("gate_up_proj", "w1")] = tensor[:, :half]
            out[key.replace("gate_up_proj", "w3")] = tensor[:, half:]
        elif key.endswith(".experts.down_proj"):
            out[key.replace("down_proj", "w2")] = tensor
        elif router in key and ".experts." not in key:
            rest = key.split(router, 1)[1]
            out[key.replace(router, block + ("router.gate." if rest == "weight" else "router."))] = tensor
        elif f.shared_expert_gate and f".{f.shared_expert_gate}." in key:
            out[key.replace(f".{f.shared_expert_gate}.", ".shared_experts_gate.")] = tensor
        elif f.shared_expert and f".{f.shared_expert}." in key:
            out[key.replace(f".{f.shared_expert}.", ".shared_experts.")] = tensor
        else:
            out[key] = tensor
    return out


@pytest.mark.parametrize("family", EXACT)
def test_autoep_names_convert_back_to_every_tensor_of_the_family(family):
    from transformers import AutoConfig, AutoModelForCausalLM

    f = FAMILIES[family]
    config = AutoConfig.for_model(family, vocab_size=64, **TINY[family])
    model = AutoModelForCausalLM.from_config(config)
    expected = model.state_dict()
    back = to_transformers_names(autoep_names(model, f), f)
    assert back.keys() == expected.keys() and all(torch.equal(back[k], expected[k]) for k in expected)
    _check_complete(config, back)
    dropped = dict(back)
    dropped.pop(next(k for k in back if ".experts." in k))
    with pytest.raises(ValueError, match="missing"):  # a folder without every tensor is never written
        _check_complete(config, dropped)


def decisive_model(family, dtype):
    """A tiny model of `family` whose routers are decisive (a rounding difference must not flip a near-tie)."""
    import transformers

    f = FAMILIES[family]
    config = getattr(transformers, f.config_class)(vocab_size=96, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                                   **TINY[family])
    torch.manual_seed(0)
    model = getattr(transformers, f.model_class)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(f".{f.router_module}.weight"):
                p.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    return model.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", EXACT)
def test_each_preset_converts_the_family_to_the_same_function(family, dtype):
    """In one process (AutoEP with ep_size 1, no communication) the converted model computes the transformers
    model's logits: float32 to 2e-7; bfloat16 bit-exact for mixtral and where the router runs in float32 (the
    toolkit's `match_router_precision`), else within one bfloat16 step (measured: 1.95e-3 on logits below 0.5, where
    the step is 2^-9)."""
    import copy

    from deepspeed.module_inject.auto_ep import AutoEP
    from deepspeed.module_inject.auto_ep_config import parse_autoep_config

    from adapt.parallel.autoep import describe, match_router_precision

    register_presets()
    model = decisive_model(family, dtype)
    converted = copy.deepcopy(model)
    autoep = AutoEP(converted, parse_autoep_config({"enabled": True, "autoep_size": 1}))
    autoep.replace_moe_layers(autoep.ep_parser(), ep_size=1, ep_rank=0)
    changed = match_router_precision(converted)
    assert describe(converted)["preset"] == PRESET_PREFIX + family
    assert changed == (len(describe(converted)["layers"]) if FAMILIES[family].router_float32 else 0)
    ids = torch.randint(2, 96, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (converted(input_ids=ids).logits.float() - model(input_ids=ids).logits.float()).abs().max().item()
    if dtype == torch.float32:
        assert diff < 2e-7
    elif FAMILIES[family].router_float32:
        assert diff == 0
    else:
        assert diff <= 2 ** -9


# ------------------------------------------------------------------------------------- two processes (gloo)

PARITY_RUNS = [(f, "zero2") for f in EXACT] + [("deepseek_v3", "zero3"), ("qwen2_moe", "zero3-offload")]


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """tests/scripts/ep_parity.py on every (family, ZeRO preset), in one launch: {(family, zero): [rank 0's result,
    rank 1's]}. Each run has its own model, engine and seeds; the start-up of two processes importing DeepSpeed and
    transformers is most of a launch (the tiny models' steps are little of it), paid here once instead of per run."""
    out = tmp_path_factory.mktemp("ep-parity")
    runs = ",".join(f"{family}:{zero}" for family, zero in PARITY_RUNS)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(REPO / "tests/scripts/ep_parity.py"), runs, str(out)], cwd=REPO,
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return {(f, z): [json.loads((out / f"{f}-{z}" / f"rank{r}.json").read_text()) for r in (0, 1)]
            for f, z in PARITY_RUNS}


def close(diff, value, tol):
    return diff <= tol * max(1.0, abs(value))


@pytest.mark.multiprocess
@pytest.mark.parametrize("family,zero", PARITY_RUNS)
def test_expert_parallel_model_matches_one_process(family, zero, parity):
    for r in parity[family, zero]:
        assert r["autoep"] == "AutoEPMoELayer"
        first = r["steps"][0]
        assert first["logits"] < 5e-7
        for step in r["steps"]:
            assert step["layers"] and step["own_counts_equal"] and step["summed_counts_equal"]
            assert step["lm_loss"] < 1e-5 and step["entropy"] < 1e-3
            assert close(step["lb"], step["lb_value"], 1e-5) and close(step["z"], step["z_value"], 2e-5)
            assert step["grad_norm"] < 1e-5  # relative: clipping sees the one-process norm
        assert r["grads_compared"] == r["grads_expected"] and r["grad_rel_diff"] < 5e-6, r["grad_worst"]
        assert r["trajectory_logits"] < (5e-4 if family in ("olmoe", "qwen3_moe") else 5e-6)
        assert r["reloaded_keys_equal"] and r["reloaded_logits"] < 5e-7


def family_recipe(tmp_path, family, stage, base=None, **training):
    """A tiny `family` model built from its config (SFT), or the run folder `base` (DPO)."""
    softmax = FAMILIES[family].router_losses
    model = {"architecture": family, "config": TINY[family], "tokenizer": "builtin:demo"}
    raw = {
        "stage": stage,
        "model": {"name_or_path": str(base), "dtype": "float32"} if base else {**model, "dtype": "float32"},
        "data": {"sources": [{"task": "reverse", "rows": 64}], "cache": False},
        "router": {"load_balancing_weight": 0.01 if softmax else 0, "z_loss_weight": 0.001 if softmax else 0},
        "parallel": {"deepspeed": "zero2"},
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "max_length": 48,
                     "logging_steps": 1, "save_strategy": "no", "report_to": [], "bf16": False, "seed": 0,
                     "lr_scheduler_type": "constant", "warmup_steps": 0, **training},
    }
    return write_recipe(tmp_path / f"{family}-{stage}.yaml", yaml.safe_dump(raw))


def launch(stage, recipe, *overrides):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config("cpu-2proc")),
           "-m", f"adapt.stages.{stage}", "--config", str(recipe), "--overwrite", *overrides]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]


def logged(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    stats = [json.loads(line) for line in (folder / "router_stats.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], stats


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("family", ["qwen3_moe"])  # deepseek_v3 runs the stages in the resume test below
def test_sft_then_dpo_under_expert_parallelism_follow_the_run_without_it(family, tmp_path):
    """The same 2-process run (ZeRO-2) with the experts split over the ranks and with every rank holding them all:
    the stage's losses, router losses and statistics and the saved model agree. (2-process ZeRO-2 without expert
    parallelism is held to the one-process reference in tests/test_data_parallel.py.)"""
    from transformers import AutoModelForCausalLM

    for ep in (1, 2):
        sft = family_recipe(tmp_path, family, "sft", output_dir=str(tmp_path / f"sft-ep{ep}"))
        launch("sft", sft, f"parallel.expert_parallel_size={ep}")
        dpo = family_recipe(tmp_path, family, "dpo", base=tmp_path / f"sft-ep{ep}", learning_rate=1e-3,
                            output_dir=str(tmp_path / f"dpo-ep{ep}"))
        launch("dpo", dpo, f"parallel.expert_parallel_size={ep}")
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    for stage in ("sft", "dpo"):
        (plain, plain_stats), (split, split_stats) = (logged(tmp_path / f"{stage}-ep{ep}") for ep in (1, 2))
        assert [r["step"] for r in split] == [1, 2, 3]
        for a, b in zip(plain, split):
            for key in ("loss", "aux_loss", "z_loss", "grad_norm"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (stage, key)
        for a, b in zip(plain_stats, split_stats):
            assert b["layers"] == a["layers"] and b["expert_share"] == a["expert_share"]  # the same choices
        record = json.loads((tmp_path / f"{stage}-ep2" / "run.json").read_text())["expert_parallel"]
        assert record["preset"] == PRESET_PREFIX + family and record["experts_per_rank"] == 4
        assert "expert_parallel" not in json.loads((tmp_path / f"{stage}-ep1" / "run.json").read_text())
        models = [AutoModelForCausalLM.from_pretrained(tmp_path / f"{stage}-ep{ep}").eval() for ep in (1, 2)]
        assert models[0].state_dict().keys() == models[1].state_dict().keys()
        with torch.no_grad():
            logits = [m(input_ids=ids).logits for m in models]
        assert (logits[0] - logits[1]).abs().max().item() < 1e-3


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_from_an_expert_parallel_checkpoint_continues_the_trajectory(tmp_path):
    """deepseek_v3 (shared experts, the score-correction buffer, group-limited routing): a new run resumed from the
    uninterrupted run's step-2 checkpoint logs that run's step-3 loss. A run stopped after step 2 leaves the same
    checkpoint, and the fresh launch reads everything the step needs back from disk either way, so a third launch
    that stops a run there proves nothing more (a resumed run's log keeping its own first steps: test_scaleout.py)."""
    common = ["parallel.expert_parallel_size=2", "training.save_strategy=steps", "training.save_steps=2"]
    straight = family_recipe(tmp_path, "deepseek_v3", "sft", output_dir=str(tmp_path / "straight"))
    launch("sft", straight, *common)
    resumed = family_recipe(tmp_path, "deepseek_v3", "sft", output_dir=str(tmp_path / "resumed"))
    launch("sft", resumed, *common, f"training.resume_from_checkpoint={tmp_path / 'straight' / 'checkpoint-2'}")
    (a, _), (b, _) = logged(tmp_path / "straight"), logged(tmp_path / "resumed")
    assert [r["step"] for r in a] == [1, 2, 3] and [r["step"] for r in b] == [3]
    assert b[0]["loss"] == pytest.approx(a[2]["loss"], rel=1e-6)
    assert b[0]["grad_norm"] == pytest.approx(a[2]["grad_norm"], rel=1e-5)
