"""ESFT (`experts:`): the selection takes what its criterion says (a hand-computed routing, padding excluded); a real
`adapt sft` with AdamW and weight decay moves only the selected experts' slices, bit for bit, and the optimizer
holds state for those slices only; every family's fused experts train the same way in a plain torch loop, with the
gradient full fine-tuning would give them; DPO ranks the experts from an `adapt analyze` result; a resumed run
continues the uninterrupted one; ZeRO-2 on 2 processes; and every combination ESFT cannot run is one line."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
import yaml
from transformers import AutoModelForCausalLM

from adapt.config import RecipeError, load_recipe
from adapt.config.families import FAMILIES
from adapt.data.tokenizer import load_tokenizer
from adapt.model.expert_selection import ExpertScores, pick, route, sample_sequences, select
from adapt.model.expert_slices import SUFFIX, experts_modules, freeze, unwrap
from adapt.model.loading import load_model
from adapt.model.routing import find_backbone, router_modules
from adapt.stages import dpo, sft
from conftest import REPO, TINY_DPO, TINY_SFT, tiny_olmoe, write_recipe
from tiny_families import MOE_LAYERS, TINY

EXPERTS = "model.layers.{layer}.mlp.experts.{name}"


def esft_recipe(tmp_path, name="sft", steps=3, **experts):
    raw = yaml.safe_load(TINY_SFT.format(rows=32, lb=0.01, z=0.001, out=tmp_path / name, steps=steps))
    # AdamW's decoupled decay would move any parameter the optimizer held; a constant rate, so that a run cut short
    # and resumed takes the same steps as a whole one
    raw["training"].update(weight_decay=0.1, lr_scheduler_type="constant")
    raw["experts"] = {"select": "token_ratio", "threshold": 0.5, "max_rows": 16, **experts}
    return write_recipe(tmp_path / f"{name}.yaml", yaml.safe_dump(raw))


def moved_experts(before, after, layer, name="gate_up_proj"):
    """The expert ids whose slice of a fused tensor changed."""
    key = EXPERTS.format(layer=layer, name=name)
    return (after[key] - before[key]).flatten(1).abs().amax(1).nonzero().flatten().tolist()


def optimizer_bytes(optimizer) -> int:
    """Bytes of the optimizer's per-parameter tensors (AdamW's two moments; its scalar step counters left out)."""
    return sum(t.nbytes for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)
               and t.dim() > 0)


# ---------------------------------------------------------------------------------------------------- selection

# One layer's routing, by hand: 2 sequences (4 and 2 real tokens, the second padded to 4), 4 experts, top-2.
CHOICES = [[0, 1], [0, 2], [1, 2], [0, 3], [2, 3], [0, 2], [3, 1], [3, 1]]
WEIGHTS = [[.6, .4], [.9, .1], [.5, .5], [.7, .3], [.8, .2], [.6, .4], [1., 1.], [1., 1.]]  # last two: padding
# Over the 6 real tokens: weight sums 2.8, 0.9, 1.8, 0.5 (shares .467, .15, .3, .083); chosen by 4, 2, 4, 2 tokens
# (shares .333, .167, .333, .167). Padding counted would add 2 to experts 3 and 1.


def test_the_selection_takes_what_the_criterion_says_padding_excluded():
    model = tiny_olmoe()
    (layer, router), *_ = router_modules(find_backbone(model))

    def by_hand(module, args, out):
        return out[0], torch.tensor(WEIGHTS), torch.tensor(CHOICES)
    router.register_forward_hook(by_hand)
    scores = route(model, [[5, 6, 7, 8], [9, 10]], batch_size=2)
    row = scores.layers.index(layer)
    assert scores.tokens == 6 and scores.rows == 2
    assert scores.weight_sum_LE[row].tolist() == pytest.approx([2.8, 0.9, 1.8, 0.5])
    assert scores.chosen_LE[row].tolist() == [4, 2, 4, 2]
    gate, token = (select(scores, c, 0.4)[layer] for c in ("gate_score", "token_ratio"))
    assert (gate, token) == ([0], [0, 2])  # .467 reaches 0.4 alone; .333 does not, the tie goes to the lower id
    assert select(scores, "gate_score", 0.8)[layer] == [0, 1, 2]  # .467 + .3 = .767 < .8, then .15
    assert select(scores, "token_ratio", 0.8)[layer] == [0, 1, 2]  # .333 + .333, then the lower of two .167s
    assert select(scores, "token_ratio", 1.0)[layer] == [0, 1, 2, 3]


def test_an_expert_no_token_chose_is_never_picked():
    assert pick(torch.tensor([0.5, 0.0, 0.5, 0.0]), 1.0) == [0, 2]
    scores = ExpertScores([3], None, torch.tensor([[0.0, 6.0, 2.0]], dtype=torch.float64), tokens=4, rows=1)
    assert select(scores, "token_ratio", 0.5) == {3: [1]}


def test_the_routed_sequences_are_the_stage_rows_documents_and_pairs():
    from datasets import Dataset

    packed = Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5], [6, 7]], "seq_lengths": [[2, 3], [2]]})
    assert sample_sequences(packed, "sft", 10, seed=0) == [[1, 2], [3, 4, 5], [6, 7]]
    pairs = Dataset.from_dict({"prompt_ids": [[1], [2]], "chosen_ids": [[3], [4]], "rejected_ids": [[5], [6]]})
    assert sample_sequences(pairs, "dpo", 10, seed=0) == [[1, 3], [1, 5], [2, 4], [2, 6]]
    assert len(sample_sequences(pairs, "dpo", 1, seed=0)) == 2  # max_rows counts rows (pairs), not sequences


# ------------------------------------------------------------------------------------------------- adapt sft

@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("esft")
    config = load_recipe(esft_recipe(tmp))
    base = load_model(config.model, load_tokenizer(config.model), seed=config.seed).state_dict()
    base = {k: v.clone() for k, v in base.items()}
    trainer = sft.run(config)
    return tmp, base, trainer


def test_sft_moves_only_the_selected_experts_bit_for_bit(sft_run):
    tmp, base, trainer = sft_run
    record = json.loads((tmp / "sft" / "experts.json").read_text())
    assert record["criterion"] == "token_ratio" and record["threshold"] == 0.5 and record["rows_routed"] == 16
    selected = {int(layer): entry["selected"] for layer, entry in record["layers"].items()}
    assert set(selected) == {0, 1} and all(0 < len(ids) < 4 for ids in selected.values())
    for entry in record["layers"].values():  # both criteria recorded for every expert
        assert len(entry["gate_score"]) == len(entry["token_ratio"]) == 4
        assert sum(entry["token_ratio"]) == pytest.approx(2.0)  # top-2: each token chose two experts
    saved = AutoModelForCausalLM.from_pretrained(tmp / "sft").state_dict()
    assert sorted(saved) == sorted(base)  # the family's plain layout, every tensor
    fused = {EXPERTS.format(layer=layer, name=n) for layer in selected for n in ("gate_up_proj", "down_proj")}
    assert [k for k in base if k not in fused and not torch.equal(base[k], saved[k])] == []  # frozen: bit-identical
    for layer, ids in selected.items():
        for name in ("gate_up_proj", "down_proj"):
            assert moved_experts(base, saved, layer, name) == ids  # the selected moved; the others bit-identical
    # optimizer state for the selected slices only: AdamW's two fp32 moments per trained parameter
    slice_params = sum(ids.__len__() * (64 * 32 + 32 * 32) for ids in selected.values())  # gate_up [2I, H], down
    assert optimizer_bytes(trainer.optimizer) == 2 * 4 * slice_params


def test_the_model_card_names_the_trained_experts(sft_run, tmp_path):
    from adapt.hub.push import dry_run

    tmp, _, _ = sft_run
    folder = dry_run(tmp / "sft", tmp_path / "out", "org/esft")
    card = (folder.path / "README.md").read_text()
    record = json.loads((folder.path / "experts.json").read_text())
    assert "## Expert-specialized fine-tuning (ESFT)" in card and "token-selection ratio" in card
    for layer, entry in record["layers"].items():
        assert f"| {layer} | {', '.join(map(str, entry['selected']))} |" in card


def test_dpo_ranks_the_experts_from_an_adapt_analyze_result(sft_run, tmp_path):
    from adapt_eval.routing.run import analyze

    tmp, _, _ = sft_run
    result = analyze({"sft": str(tmp / "sft")}, {"reverse": "task:reverse"}, texts_per_domain=8, log=lambda x: None)
    (tmp_path / "analysis.json").write_text(json.dumps(result))
    result = json.loads((tmp_path / "analysis.json").read_text())  # as the file holds it: layers keyed by text
    raw = yaml.safe_load(TINY_DPO.format(rows=16, lb=0.01, z=0.001, out=tmp_path / "dpo", steps=2, model=tmp / "sft"))
    raw["experts"] = {"select": "token_ratio", "threshold": 0.3, "from_analysis": str(tmp_path / "analysis.json")}
    raw["training"]["weight_decay"] = 0.1
    config = load_recipe(write_recipe(tmp_path / "dpo.yaml", yaml.safe_dump(raw)))
    start = AutoModelForCausalLM.from_pretrained(tmp / "sft").state_dict()
    dpo.run(config)
    record = json.loads((tmp_path / "dpo" / "experts.json").read_text())
    model = result["per_model"]["sft"]
    for layer, entry in record["layers"].items():
        load = model["layers"][layer]["load"]
        assert entry["token_ratio"] == pytest.approx([x / model["tokens"] for x in load])
        assert entry["gate_score"] is None  # an analysis keeps no routing weights
        best = max(range(len(load)), key=lambda e: (load[e], -e))
        assert best in entry["selected"]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo").state_dict()
    for layer, entry in record["layers"].items():
        assert moved_experts(start, saved, int(layer)) == entry["selected"]
    assert [k for k in start if "experts" not in k and not torch.equal(start[k], saved[k])] == []


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_slices(tmp_path):
    whole = sft.run(load_recipe(esft_recipe(tmp_path, "whole", steps=3)))
    path = esft_recipe(tmp_path, "cut", steps=3)
    raw = yaml.safe_load(path.read_text())
    raw["training"].update(save_strategy="steps", save_steps=2, max_steps=2)
    sft.run(load_recipe(write_recipe(path, yaml.safe_dump(raw))))
    raw["training"].update(max_steps=3, resume_from_checkpoint="latest")
    config = load_recipe(write_recipe(path, yaml.safe_dump(raw)))
    config.allow_changed = ("training.max_steps",)  # `adapt sft --allow-changed training.max_steps`
    resumed = sft.run(config)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert (tmp_path / "cut" / "experts.json").read_text() == (tmp_path / "whole" / "experts.json").read_text()
    logged = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]  # the resumed run took step 3 only


# ------------------------------------------------------------------------------------------------ every family

@pytest.mark.parametrize("family", list(TINY))
def test_every_family_trains_only_the_selected_slices(family):
    """transformers 5 fuses every family's experts (gpt-oss with per-expert biases too): a few AdamW steps with
    weight decay through the wrapped model move the selected slices only, with full fine-tuning's gradient."""
    f = FAMILIES[family]
    config = getattr(transformers, f.config_class)(vocab_size=64, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                                   **TINY[family])
    torch.manual_seed(0)
    model = getattr(transformers, f.model_class)(config).float()
    for p in model.parameters():  # the tensors transformers initialises to zero (biases, sinks) set random
        if not p.abs().max():
            torch.nn.init.normal_(p, std=0.02)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    full = getattr(transformers, f.model_class)(config).float()
    full.load_state_dict(base)
    layer = MOE_LAYERS[family][-1]
    freeze(model, f, {layer: [1, 6]}, [])
    assert set(model.state_dict()) == set(base)  # the plain layout, even while wrapped
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = torch.randint(2, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    experts = experts_modules(model, f)[layer]
    for step in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if step == 0:  # the same loss and, for the selected slices, the gradient full fine-tuning computes
            full_loss = full(input_ids=ids, labels=ids).loss
            full_loss.backward()
            assert loss.item() == pytest.approx(full_loss.item(), abs=1e-6)
            full_experts = experts_modules(full, f)[layer]
            for name in experts._esft_names:
                torch.testing.assert_close(getattr(experts, name + SUFFIX).grad,
                                           getattr(full_experts, name).grad[[1, 6]], rtol=1e-5, atol=1e-7)
        optimizer.step()
        optimizer.zero_grad()
    assert optimizer_bytes(optimizer) == 2 * 4 * sum(getattr(experts, n + SUFFIX).numel() for n in experts._esft_names)
    unwrap(model)
    after = model.state_dict()
    assert set(after) == set(base)
    prefix = f"model.layers.{layer}.{f.moe_block}.experts."
    assert [k for k in base if not k.startswith(prefix) and not torch.equal(base[k], after[k])] == []
    for name in (n for n in base if n.startswith(prefix)):
        assert (after[name] - base[name]).flatten(1).abs().amax(1).nonzero().flatten().tolist() == [1, 6], name


def test_every_part_a_recipe_may_keep_trainable_is_found():
    from adapt.config.sections import ESFT_TRAINABLE
    from adapt.model.expert_slices import part_parameters

    f = FAMILIES["qwen2_moe"]  # a family with a shared expert and its gate
    model = transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(vocab_size=64, **TINY["qwen2_moe"]))
    found = {part: {id(p) for p in part_parameters(model, f, part)} for part in ESFT_TRAINABLE}
    assert all(found.values()), found
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i].split(".")[-2] for i in found["router"]} == {"gate"}
    assert {names[i] for i in found["shared_experts"]} >= {"model.layers.1.mlp.shared_expert_gate.weight"}
    assert not any("experts.gate_up_proj" in names[i] for ids in found.values() for i in ids)


# --------------------------------------------------------------------------------------------- two processes

@pytest.mark.multiprocess
def test_zero2_on_two_processes_moves_only_the_selected_slices(tmp_path):
    from safetensors.torch import load_file

    from adapt.parallel import accelerate_config

    path = esft_recipe(tmp_path, "run", steps=1)  # one AdamW step with weight decay: enough to move a parameter
    config = load_recipe(path)
    base = {k: v.clone() for k, v in load_model(config.model, load_tokenizer(config.model), seed=0).state_dict()
            .items()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(accelerate_config("cpu-2proc")), str(REPO / "tests/scripts/dp_step.py"), str(tmp_path),
                          "sft", "--config", str(path), "parallel.deepspeed=zero2"], cwd=REPO, capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert sorted(rank0) == sorted(base) and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    record = json.loads((tmp_path / "run" / "experts.json").read_text())
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run").state_dict()
    for layer, entry in record["layers"].items():
        assert moved_experts(base, saved, int(layer)) == entry["selected"]
    assert [k for k in base if "experts" not in k and not torch.equal(base[k], saved[k])] == []


# ---------------------------------------------------------------------------------------------------- refused

@pytest.mark.parametrize("overrides, key, words", [
    (["parallel.expert_parallel_size=2", "parallel.deepspeed=zero2"], "experts.select", "expert parallelism"),
    (["experts.threshold=0"], "experts.threshold", "in (0, 1], got 0"),
    (["experts.threshold=1.5"], "experts.threshold", "(0, 1]"),
    (["experts.select=list", "experts.experts={7: [0]}"], "experts.experts.7", "unknown layer 7"),
    (["experts.select=list", "experts.experts={1: [4]}"], "experts.experts.1", "unknown expert 4"),
    (["experts.select=list"], "experts.experts", "needs the experts"),
    (["experts.experts={0: [1]}"], "experts.experts", "select is token_ratio"),
    (["parallel.deepspeed=zero3"], "parallel.deepspeed", "ZeRO-3"),
    (["experts.select=gate_score", "experts.from_analysis=x.json"], "experts.from_analysis", "routing weights"),
    (["experts.train=[attention, routr]"], "experts.train[1]", "did you mean `router`"),
    (["experts.train=[shared_experts]"], "experts.train", "olmoe has no shared expert"),
    (["experts.select=all"], "experts.threshold", "no effect"),
    (["experts.max_rows=0"], "experts.max_rows", ">= 1"),
])
def test_what_esft_cannot_run_is_one_line(tmp_path, overrides, key, words):
    with pytest.raises(RecipeError) as info:
        load_recipe(esft_recipe(tmp_path), overrides)
    message = str(info.value)
    assert f": {key}: " in message and words in message and "\n" not in message, message


def test_esft_with_lora_is_refused(tmp_path, demo_tokenizer):
    folder = tmp_path / "base"
    tiny_olmoe().save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    raw = yaml.safe_load(esft_recipe(tmp_path).read_text())
    raw["model"] = {"name_or_path": str(folder), "dtype": "float32"}
    raw["peft"] = {"method": "lora"}
    with pytest.raises(RecipeError, match=r"experts\.select: ESFT and LoRA both decide what trains"):
        load_recipe(write_recipe(tmp_path / "lora.yaml", yaml.safe_dump(raw)))


def test_an_analysis_that_lacks_the_loads_is_refused(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"per_model": {"a": {"layers": {}, "tokens": 0},
                                                               "b": {"layers": {}, "tokens": 0}}}))
    with pytest.raises(RecipeError, match="analyses 2 models"):
        load_recipe(esft_recipe(tmp_path), [f"experts.from_analysis={tmp_path / 'a.json'}"])
    with pytest.raises(RecipeError, match="routed no tokens"):
        load_recipe(esft_recipe(tmp_path), [f"experts.from_analysis={tmp_path / 'a.json'}",
                                            "experts.analysis_model=a"])


def test_a_listed_dense_layer_stops_the_stage_in_one_line(tmp_path):
    raw = yaml.safe_load(esft_recipe(tmp_path).read_text())
    raw["model"]["architecture"] = "qwen3_moe"
    raw["model"]["config"] = dict(TINY["qwen3_moe"], max_position_embeddings=64)
    raw["experts"] = {"select": "list", "experts": {0: [1]}}  # layer 0 is dense (mlp_only_layers)
    with pytest.raises(SystemExit) as info:
        sft.run(load_recipe(write_recipe(tmp_path / "dense.yaml", yaml.safe_dump(raw))))
    assert "experts.experts: layer 0 is not an MoE layer of this qwen3_moe model (its MoE layers: 1)" in str(
        info.value.code) and "\n" not in str(info.value.code)
