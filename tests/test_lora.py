"""LoRA from a recipe (`peft:`) on a tiny OLMoE: SFT then DPO train only the adapters (and the router copy when
asked), with the router losses logged; the base weights stay bit-identical; the merged model equals the adapter
model; DPO's reference is the SFT policy; an adapter folder loads, evaluates and pushes; bad LoRA settings fail in
one line before anything loads."""

import dataclasses
import json
import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from adapt.config import RecipeError, load_recipe
from adapt.config.families import FAMILIES
from adapt.data.tokenizer import load_tokenizer
from adapt.model.loading import load_model
from adapt.model.lora import LoraSetupError, apply_lora, load_merged_adapter
from adapt.stages import dpo, sft
from conftest import TINY_DPO, TINY_SFT, write_recipe

LORA = {"method": "lora", "r": 4, "alpha": 8, "targets": ["attention", "experts", "router"]}


def with_lora(text: str, **peft) -> dict:
    raw = yaml.safe_load(text)
    raw["peft"] = {**LORA, **peft}
    return raw


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny OLMoE saved as a folder: a LoRA run's base must be loadable, since the run saves only the adapter."""
    folder = tmp_path_factory.mktemp("base") / "base"
    raw = yaml.safe_load(TINY_SFT.format(rows=16, lb=0.01, z=0.001, out=folder.parent / "unused", steps=1))
    config = load_recipe(write_recipe(folder.parent / "b.yaml", yaml.safe_dump(raw)))
    tokenizer = load_tokenizer(config.model)
    load_model(config.model, tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def lora_sft(base, tmp_path, steps=2):
    raw = with_lora(TINY_SFT.format(rows=16, lb=0.01, z=0.001, out=tmp_path / "sft", steps=steps))
    raw["model"] = {"name_or_path": str(base), "dtype": "float32"}
    return load_recipe(write_recipe(tmp_path / "sft.yaml", yaml.safe_dump(raw)))


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def metrics(folder):
    return [r for r in (json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


@pytest.mark.slow
def test_lora_sft_then_dpo(base, tmp_path):
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    original = AutoModelForCausalLM.from_pretrained(base)
    trainer = sft.run(lora_sft(base, tmp_path))
    policy = trainer.model
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any(".gate.modules_to_save." in n for n in trainable)  # the router, trained fully as asked
    with policy.disable_adapter():  # the base weights are bit-identical after training
        assert torch.equal(logits(policy, ids), logits(original, ids))
    rows = metrics(tmp_path / "sft")
    assert len(rows) == 2
    assert all(r["aux_loss"] == pytest.approx(2, rel=0.1) and r["z_loss"] == pytest.approx(math.log(4) ** 2, rel=0.15)
               for r in rows)  # near-uniform 4-expert top-2 routers, through the PEFT wrapper

    folder = tmp_path / "sft"
    assert {"adapter_config.json", "adapter_model.safetensors", "run.json", "recipe.yaml"} <= {
        p.name for p in folder.iterdir()}
    merged = load_merged_adapter(str(folder), torch.float32)
    assert (logits(merged, ids) - logits(policy, ids)).abs().max().item() < 1e-5  # merged == adapter model
    loaded = AutoModelForCausalLM.from_pretrained(folder)  # what `adapt eval` loads: base + adapter
    assert (logits(loaded, ids) - logits(policy, ids)).abs().max().item() < 1e-5

    # DPO from the adapter folder: it starts from the merged SFT policy with a fresh adapter, and its reference is
    # that policy (TRL's frozen copy of the adapter), so at the first step the log-ratios are exactly 0
    raw = with_lora(TINY_DPO.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "dpo", steps=2, model=folder))
    dpo_trainer = dpo.run(load_recipe(write_recipe(tmp_path / "dpo.yaml", yaml.safe_dump(raw))))
    assert not (tmp_path / "dpo" / "ref").exists()  # TRL's frozen reference copy is not saved as a second adapter
    rows = metrics(tmp_path / "dpo")
    assert rows[0]["rewards/chosen"] == 0.0 and rows[0]["rewards/rejected"] == 0.0
    assert all("aux_loss" in r and "z_loss" in r for r in rows)
    with dpo_trainer.model.disable_adapter():
        assert (logits(dpo_trainer.model, ids) - logits(merged, ids)).abs().max().item() < 1e-5
    # the DPO adapter was trained on the merged SFT policy: its folder names the SFT folder as its base, and loads
    # back as SFT merged + DPO adapter (naming the random base would silently drop the SFT adapter)
    dpo_config = json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())
    assert dpo_config["base_model_name_or_path"] == str(folder)
    dpo_policy = logits(dpo_trainer.model, ids)
    assert (logits(load_merged_adapter(str(tmp_path / "dpo"), "auto"), ids) - dpo_policy).abs().max().item() < 1e-5
    assert (logits(dpo_trainer.model, ids) - logits(merged, ids)).abs().max().item() > 1e-4  # DPO moved it
    from adapt_eval.runner import build_model

    eval_loaded = build_model(str(tmp_path / "dpo"), 1, "cpu", 64).model  # what `adapt eval` runs
    assert (logits(eval_loaded, ids) - dpo_policy).abs().max().item() < 1e-5

    from adapt.hub.push import dry_run
    from adapt.tasks import get_task
    from adapt_eval.task_eval import evaluate_task

    published = dry_run(tmp_path / "sft", tmp_path / "push", "org/tiny-lora")
    assert published.what == "adapter" and "adapter_model.safetensors" in published.files
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)  # the adapter folder holds the tokenizer too
    scores = evaluate_task(loaded, tokenizer, get_task("reverse"), n_items=2, n_pairs=2, max_new_tokens=4)
    assert (scores["n_items"], scores["n_pairs"]) == (2, 2)


@pytest.mark.slow
def test_dpo_continuing_the_sft_adapter_with_cached_reference_log_probs(base, tmp_path):
    """`peft.from_adapter: continue`: DPO trains the SFT adapter itself, against a frozen copy of it as the
    reference, and the reference log-probs precomputed once (TRL's cache) are the SFT policy's."""
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    sft_policy = sft.run(lora_sft(base, tmp_path)).model
    raw = with_lora(TINY_DPO.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "dpo", steps=1, model=tmp_path / "sft"),
                    from_adapter="continue")
    raw["training"]["precompute_ref_log_probs"] = True
    config = load_recipe(write_recipe(tmp_path / "dpo.yaml", yaml.safe_dump(raw)))
    from adapt.data.prepare import prepare_data
    from adapt.trainers import AdaptDPOTrainer

    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, tokenizer, peft=config.peft)
    assert (logits(model, ids) - logits(sft_policy, ids)).abs().max().item() < 1e-6  # the SFT adapter, continued
    data = prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer, use_cache=False)
    trainer = AdaptDPOTrainer(model=model, ref_model=None, args=config, train_dataset=data.train,
                              processing_class=tokenizer)
    assert "ref" in model.peft_config  # TRL's frozen copy of the adapter: the reference
    trainer.train()
    first = [h for h in trainer.state.log_history if "loss" in h][0]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0  # cached reference == SFT policy

    raw["peft"]["r"] = 8  # the saved adapter has r 4: continuing it under another r is refused
    with pytest.raises(RecipeError, match=r"peft.from_adapter: continue keeps the adapter of .* \(r=4, alpha=8\)"):
        load_recipe(write_recipe(tmp_path / "dpo8.yaml", yaml.safe_dump(raw)))


def test_a_selector_that_matches_nothing_is_refused(base, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(base)
    family = dataclasses.replace(FAMILIES["olmoe"], router_module="router")  # OLMoE's router is `gate`
    config = load_recipe(write_recipe(tmp_path / "r.yaml", yaml.safe_dump(
        {**with_lora(TINY_SFT.format(rows=4, lb=0.01, z=0.001, out=tmp_path / "o", steps=1)),
         "model": {"name_or_path": str(base)}})))
    with pytest.raises(LoraSetupError, match=r"peft.targets: `router` matches nothing in this olmoe model "
                                             r"\(looked for router\); remove it from peft.targets"):
        apply_lora(model, config.peft, family)


def refusal(tmp_path, base, parallel=None, **peft) -> str:
    raw = with_lora(TINY_SFT.format(rows=4, lb=0.01, z=0.001, out=tmp_path / "o", steps=1), **peft)
    raw["model"] = {"name_or_path": str(base)}
    if parallel:
        raw["parallel"] = parallel
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path / "r.yaml", yaml.safe_dump(raw)))
    assert "\n" not in str(info.value)
    return str(info.value).split(": ", 1)[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA is refused only where there is no CUDA")
def test_qlora_without_cuda_is_refused(base, tmp_path):
    assert refusal(tmp_path, base, quantize="4bit") == (
        "peft.quantize: 4bit QLoRA runs through bitsandbytes on CUDA, and this machine has no CUDA GPU. "
        "Fix: remove peft.quantize, or run on a CUDA machine")


def test_bad_lora_settings_are_refused(base, tmp_path):
    assert refusal(tmp_path, base, targets=["atention"]).startswith("peft.targets[0]: unknown selector 'atention'")
    assert refusal(tmp_path, base, targets=["router"]).startswith("peft.targets: puts no LoRA adapter anywhere")
    assert refusal(tmp_path, base, r=0).startswith("peft.r: must be >= 1, got 0")
    assert refusal(tmp_path, base, parallel={"deepspeed": "zero2", "expert_parallel_size": 2}).startswith(
        "peft.method: LoRA under expert parallelism is not verified")
    raw = with_lora(TINY_SFT.format(rows=4, lb=0.01, z=0.001, out=tmp_path / "o", steps=1))  # random-init base
    with pytest.raises(RecipeError, match="peft.method: a LoRA run saves only its adapter"):
        load_recipe(write_recipe(tmp_path / "c.yaml", yaml.safe_dump(raw)))


@pytest.mark.multiprocess
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_lora_under_zero_on_two_processes_trains_and_saves(base, tmp_path, zero):
    from safetensors.torch import load_file

    from test_scaleout import accelerate_launch

    raw = with_lora(TINY_SFT.format(rows=32, lb=0.01, z=0.001, out=tmp_path / "sft", steps=2))
    raw["model"] = {"name_or_path": str(base), "dtype": "float32"}
    recipe = write_recipe(tmp_path / "sft.yaml", yaml.safe_dump(raw))
    accelerate_launch("sft", recipe, f"parallel.deepspeed={zero}", "training.per_device_train_batch_size=4")
    folder = tmp_path / "sft"
    assert json.loads((folder / "run.json").read_text())["world_size"] == 2
    adapter = load_file(str(folder / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in adapter) and any(".gate." in k for k in adapter)  # adapters and router copy
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained (B starts at zero)
    assert len(metrics(folder)) == 2 and all("aux_loss" in r and "z_loss" in r for r in metrics(folder))
    merged = load_merged_adapter(str(folder), torch.float32)  # the saved adapter loads onto its base and moves it
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(logits(merged, ids), logits(AutoModelForCausalLM.from_pretrained(base), ids))


def test_expert_lora_through_the_fused_experts_equals_grouped_mm():
    """LoRA on the fused expert weights (`target_parameters`) under `adapt_fused`: the same logits and adapter
    gradients as under transformers' grouped_mm, with trained (non-zero) adapters and decisive routers."""
    import adapt.model  # noqa: F401 (registers adapt_fused)
    from adapt.config.sections import PeftSection
    from conftest import tiny_olmoe

    def run(implementation):
        model = tiny_olmoe(seed=0, num_experts=8, num_experts_per_tok=2)
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.data.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
        model.set_experts_implementation(implementation)
        wrapped = apply_lora(model, PeftSection(method="lora", r=2, alpha=4, targets=["experts"]), FAMILIES["olmoe"])
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
        ids = torch.randint(2, 200, (2, 9), generator=torch.Generator().manual_seed(1))
        out = wrapped(input_ids=ids, labels=ids)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad for n, p in wrapped.named_parameters() if p.requires_grad}

    fused, fused_grads = run("adapt_fused")
    reference, reference_grads = run("grouped_mm")
    assert (fused - reference).abs().max().item() < 1e-5
    assert fused_grads.keys() == reference_grads.keys() and len(fused_grads) == 8  # lora_A/B x 2 weights x 2 layers
    for name, grad in reference_grads.items():
        assert ((fused_grads[name] - grad).norm() / grad.norm()).item() < 1e-5, name
