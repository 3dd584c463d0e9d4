"""Every supported MoE family (adapt/config/families.py), as tiny random models built from recipe configs: SFT then
DPO train it; the logged router losses are the model's own formula; the routing statistics count the experts the
model really used, under its own layer numbers; the saved folder holds every tensor and reloads to the same logits;
eval and the push dry-run work; and every combination the family cannot run exactly is refused by the recipe
check in one line."""

import json
import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from adapt.config import RecipeError, load_recipe
from adapt.config.families import FAMILIES
from adapt.data.prepare import prepare_data
from adapt.data.tokenizer import load_tokenizer
from adapt.model.loading import load_model
from adapt.stages import dpo, sft
from adapt.trainers import AdaptSFTTrainer
from conftest import write_recipe
from tiny_families import MOE_LAYERS, TINY


def test_the_tiny_configs_cover_the_family_table():
    assert set(TINY) == set(FAMILIES)


def recipe(tmp_path, family, stage="sft", **sections):
    softmax = FAMILIES[family].router_losses
    raw = {
        "stage": stage,
        "model": {"architecture": family, "config": TINY[family], "tokenizer": "builtin:demo", "dtype": "float32"},
        "data": {"sources": [{"task": "reverse", "rows": 16}], "cache": False},
        "router": {"load_balancing_weight": 0.01 if softmax else 0, "z_loss_weight": 0.001 if softmax else 0},
        "training": {"output_dir": str(tmp_path / stage), "max_steps": 2, "per_device_train_batch_size": 4,
                     "learning_rate": 1e-2, "max_length": 48, "logging_steps": 1, "save_strategy": "no",
                     "report_to": [], "bf16": False, "disable_tqdm": True, "seed": 0},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return write_recipe(tmp_path / f"{family}-{stage}.yaml", yaml.safe_dump(raw))


def train_rows(folder):
    return [r for r in (json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def assert_folder_holds(folder, model):
    """Reloading the folder gives back every tensor of `model` (parameters and buffers: shared experts, score
    biases), bit for bit. transformers may save the checkpoint layout (per-expert weights) rather than the module
    layout, so the comparison is after loading; a tensor missing from the folder would be freshly initialised."""
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    expected, got = model.state_dict(), reloaded.state_dict()
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if not torch.equal(expected[k].cpu(), got[k])] == []
    return reloaded


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY))
def test_sft_then_dpo_saves_every_tensor_and_logs_what_the_router_did(family, tmp_path):
    config = load_recipe(recipe(tmp_path, family))
    tokenizer = load_tokenizer(config.model)
    initial = {k: v.clone() for k, v in load_model(config.model, tokenizer, seed=config.seed).state_dict().items()}
    trainer = sft.run(config)
    folder = tmp_path / "sft"

    # the folder holds every tensor of the model (shared experts and score biases included), and reloads to the
    # same logits
    model = trainer.model.eval()
    reloaded = assert_folder_holds(folder, model)
    ids = torch.tensor([tokenizer("Reverse: a b c")["input_ids"]])
    with torch.no_grad():
        difference = (reloaded(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
    # bit-equal weights; the logits agree to float32 rounding (granitemoe's differ by 1 ulp: its trained weights are
    # laid out differently in memory from the freshly loaded ones, which changes the kernels' summation order)
    assert difference < 1e-6
    trained = model.state_dict()
    assert any(".shared_expert" in k for k in trained) == FAMILIES[family].shared_experts  # the table says true
    routers = [k for k in initial if k.endswith((".gate.weight", ".router.weight"))]
    assert routers and all(not torch.equal(initial[k], trained[k]) for k in routers)

    # what was logged: the router losses at the first step, from a fresh near-uniform router, are about top_k
    # (load balancing) and (ln 8)^2 (z-loss) for softmax routers, and absent for sigmoid routers
    rows = train_rows(folder)
    assert [r["step"] for r in rows] == [1, 2]
    if FAMILIES[family].router_losses:
        assert rows[0]["aux_loss"] == pytest.approx(2, rel=0.1)
        assert rows[0]["z_loss"] == pytest.approx(math.log(8) ** 2, rel=0.1)
    else:
        assert "aux_loss" not in rows[0] and "z_loss" not in rows[0]
    stats = [json.loads(line) for line in (folder / "router_stats.jsonl").read_text().splitlines()]
    assert [s["layers"] for s in stats] == [MOE_LAYERS[family]] * 2
    assert {f"router/layer_{n}/load_ratio" for n in MOE_LAYERS[family]} <= rows[0].keys()

    # DPO from the SFT folder trains the router too
    dpo_config = load_recipe(recipe(tmp_path, family, "dpo", model={"name_or_path": str(folder), "config": None,
                                                                   "tokenizer": None}))
    dpo_trainer = dpo.run(dpo_config)
    after = dpo_trainer.model.state_dict()
    assert all(not torch.equal(trained[k], after[k]) for k in routers)
    assert_folder_holds(tmp_path / "dpo", dpo_trainer.model.eval())

    # eval on the built-in task's held-out split, and the folder a push would upload
    from adapt.hub.push import dry_run
    from adapt.tasks import get_task
    from adapt_eval.task_eval import evaluate_task

    scores = evaluate_task(reloaded, tokenizer, get_task("reverse"), n_items=2, n_pairs=2, max_new_tokens=4)
    assert scores["n_items"] == 2 and scores["n_pairs"] == 2
    published = dry_run(tmp_path / "dpo", tmp_path / "push", "org/tiny")
    card = (published.path / "README.md").read_text()
    assert f"`{family}` mixture of experts, 2 layers, 8 experts with 2 active per token" in card


@pytest.mark.parametrize("family", list(TINY))
def test_statistics_count_the_experts_the_model_used(family, tmp_path):
    """The counts the trainer logs equal the routing the experts modules actually received in that forward."""
    config = load_recipe(recipe(tmp_path, family))
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, tokenizer, seed=0)
    data = prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer, use_cache=False)
    trainer = AdaptSFTTrainer(model=model, args=config, train_dataset=data.train, processing_class=tokenizer)
    used = {}

    def experts_input(layer):
        def hook(module, args, kwargs):  # experts(hidden_states, top_k_index [T, K], top_k_weights)
            index_TK = args[1] if len(args) > 1 else next(v for v in kwargs.values() if v.dtype == torch.long)
            used[layer] = torch.bincount(index_TK.reshape(-1), minlength=8)
        return hook

    for name, module in model.named_modules():
        if name.endswith(".experts"):  # layers.N.mlp.experts (granitemoe: layers.N.block_sparse_moe.experts)
            module.register_forward_pre_hook(experts_input(int(name.split(".")[2])), with_kwargs=True)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.train()
    trainer.compute_loss(model, dict(batch))
    stats = trainer._stats
    assert stats.layer_ids == MOE_LAYERS[family] == sorted(used)
    # without padding (a full batch of equal-length rows is not guaranteed: compare on real tokens only)
    mask = batch.get("attention_mask")
    if mask is None or bool(mask.all()):
        assert torch.equal(stats.tokens_per_expert_LE.long(), torch.stack([used[n] for n in stats.layer_ids]))
    else:
        assert (stats.tokens_per_expert_LE.sum(-1) == 2 * mask.sum()).all()


@pytest.mark.parametrize("family", [f for f in TINY if FAMILIES[f].router_losses])
def test_load_balancing_term_is_the_models_own(family, tmp_path):
    """For softmax families the toolkit's load-balancing loss equals the model's own `aux_loss`."""
    from adapt.losses import load_balancing_loss
    from adapt.model.routing import find_backbone, router_modules

    config = load_recipe(recipe(tmp_path, family))
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, tokenizer, seed=0)
    if not hasattr(model.config, "router_aux_loss_coef"):
        pytest.skip(f"{family} computes no aux_loss of its own")
    logits = []
    for _, module in router_modules(find_backbone(model)):
        module.register_forward_hook(lambda m, a, out: logits.append(out[0]))
    ids = torch.randint(3, len(tokenizer), (2, 10))
    out = model(input_ids=ids, output_router_logits=True)
    f = FAMILIES[family]
    ours = load_balancing_loss(logits, getattr(model.config, f.experts_attr), getattr(model.config, f.top_k_attr))
    assert ours.item() == pytest.approx(out.aux_loss.item(), rel=1e-6)


def refusal(tmp_path, family, **sections):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe(tmp_path, family, **sections), check_paths=False)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("family", [f for f in TINY if FAMILIES[f].expert_parallel])
def test_expert_parallelism_is_refused_where_not_exact(family, tmp_path):
    message = refusal(tmp_path, family, parallel={"deepspeed": "zero2", "expert_parallel_size": 2})
    assert (f"parallel.expert_parallel_size: expert parallelism cannot run {family} exactly: "
            f"{FAMILIES[family].expert_parallel}") in message


@pytest.mark.parametrize("family", [f for f in TINY if not FAMILIES[f].router_losses])
@pytest.mark.parametrize("weight", ["load_balancing_weight", "z_loss_weight"])
def test_router_losses_are_refused_for_sigmoid_routers(family, weight, tmp_path):
    message = refusal(tmp_path, family, router={weight: 0.001})
    assert f"router.{weight}: {family} routes by sigmoid scores balanced by a score bias" in message
    assert message.endswith(f"Fix: set router.{weight}: 0")


@pytest.mark.parametrize("family", [f for f in TINY if not FAMILIES[f].fused])
def test_fused_experts_are_refused_where_not_verified(family, tmp_path):
    message = refusal(tmp_path, family, model={"experts_implementation": "adapt_fused"})
    assert f"model.experts_implementation: adapt_fused is not verified for {family}" in message


def test_an_unsupported_family_is_refused(tmp_path):
    raw = yaml.safe_load(recipe(tmp_path, "olmoe").read_text())
    raw["model"]["architecture"] = "llama"
    with pytest.raises(RecipeError, match=r"model.architecture: model_type 'llama' is not a supported MoE family"):
        load_recipe(write_recipe(tmp_path / "llama.yaml", yaml.safe_dump(raw)))


def test_a_local_folder_of_another_family_is_checked_from_its_config(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "deepseek_v3"}))
    message = refusal(tmp_path, "olmoe", model={"name_or_path": str(folder), "config": None},
                      router={"load_balancing_weight": 0, "z_loss_weight": 0.001})
    assert "router.z_loss_weight: deepseek_v3 routes by sigmoid scores" in message


def fused_step(family, implementation, calls):
    """Loss and every gradient of one forward/backward of a tiny model of `family` with decisive routers (near-zero
    router logits would let a float32 rounding difference flip a top-k near-tie)."""
    from transformers import AutoConfig

    import adapt.model  # noqa: F401 (registers adapt_fused)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, vocab_size=256, **TINY[family]))
    for name, p in model.named_parameters():
        if name.endswith((".gate.weight", ".router.weight")) and p.shape[0] == 8:
            p.data.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    model.set_experts_implementation(implementation)
    ids = torch.randint(2, 256, (2, 33), generator=torch.Generator().manual_seed(1))
    calls.clear()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", list(TINY))
def test_fused_experts_equal_grouped_mm_where_the_table_allows_them(family, monkeypatch):
    from adapt.model import fused_experts as fx

    calls = []
    plan = fx.plan_routes
    monkeypatch.setattr(fx, "plan_routes", lambda *a, **k: calls.append(1) or plan(*a, **k))
    loss, grads = fused_step(family, "adapt_fused", calls)
    fused_ran = len(calls)
    reference_loss, reference = fused_step(family, "grouped_mm", calls)
    if not FAMILIES[family].fused:  # the layout check falls back, and the recipe check refuses it
        assert fused_ran == 0
        return
    assert fused_ran == len(MOE_LAYERS[family])  # the fused path ran in every MoE layer, no silent fallback
    assert loss == pytest.approx(reference_loss, rel=1e-6)
    assert grads.keys() == reference.keys()
    for name in grads:
        assert ((grads[name] - reference[name]).norm() / reference[name].norm().clamp(min=1e-30)).item() < 1e-5, name


@pytest.mark.parametrize("family", list(TINY))
def test_every_lora_selector_adapts_its_part_of_every_family(family):
    """The table's LoRA names (adapt/config/families.py) find each family's modules: every selector adapts something
    that receives a gradient."""
    from transformers import AutoConfig

    from adapt.config.sections import LORA_TARGETS, PeftSection
    from adapt.model.lora import apply_lora

    f = FAMILIES[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, vocab_size=256, **TINY[family]))
    wrapped = apply_lora(model, PeftSection(method="lora", r=2, alpha=4, targets=list(LORA_TARGETS)), f)
    ids = torch.randint(2, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    wrapped(input_ids=ids, labels=ids).loss.backward()
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    parts = {
        "attention": lambda n: "lora_" in n and any(f".{a}." in n for a in f.attention),
        "experts": lambda n: "lora_" in n and ".experts." in n,
        # PEFT matches module names by suffix: qwen2_moe's `shared_expert_gate` (its shared expert's gate) is trained
        # with the router
        "router": lambda n: ".modules_to_save." in n and n.split(".modules_to_save.")[0].endswith(f.router_module),
        "embeddings": lambda n: "embed_tokens.modules_to_save." in n,
        "lm_head": lambda n: "lm_head.modules_to_save." in n,
    }
    for selector, belongs in parts.items():
        names = [n for n in trainable if belongs(n)]
        assert names and all(trainable[n].grad is not None for n in names), selector
    assert set(trainable) == {n for n in trainable if any(belongs(n) for belongs in parts.values())}
