"""Publishing: `adapt push` through the real huggingface_hub client, over HTTP, to a local stand-in for the Hub
(tests/hub_server.py), on tiny SFT and DPO run folders built here. The model card, the dry-run folder (loaded back
with from_pretrained), one-commit uploads, retries, auth errors and the different-model guard."""

import json
import shutil

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapt.config import load_recipe
from adapt.hub import push as push_module
from adapt.hub.folder import FolderOptions, PublishError
from adapt.hub.push import dry_run, push_run
from adapt.stages import dpo, sft
from adapt_eval.suite import model_fingerprint
from conftest import TINY_DPO, TINY_SFT, tiny_olmoe, write_recipe
from hub_server import FakeHub

MODEL_FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "README.md", "recipe.yaml", "data_summary.json", "run.json", "metrics.jsonl",
               "assets/loss.png", "assets/aux_loss.png", "assets/z_loss.png"}


def _point_client_at(mp, hub: FakeHub, token="hf_test_write"):
    """The real client, aimed at the local server: its endpoint, online, plain HTTP/LFS uploads (Xet needs a CAS
    server this stand-in does not have; huggingface_hub reads these at import, hence the constants)."""
    mp.setattr(constants, "ENDPOINT", hub.url)
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
    mp.setenv("HF_TOKEN", token)
    mp.setattr(push_module, "RETRY_BASE_S", 0.01)


def write_results(run, sha256=None, suite="olmoe-paper"):
    """An `adapt eval` results.json (eval/README.md's format) for the run, with the run's own weights fingerprint."""
    scores = {"mmlu": ("acc", 0.52), "gsm8k": ("exact_match", 0.25), "ifeval": ("prompt_level_loose_acc", 0.4)}
    results = {"model": {"path": str(run), "sha256": sha256 or model_fingerprint(str(run))["sha256"]},
               "suite": suite, "limit": 4,
               "headline": {t: {"metric": m, "value": v} for t, (m, v) in scores.items()},
               "tasks": {t: {"scores": {m: {"value": v, "stderr": 0.1}}} for t, (m, v) in scores.items()}}
    folder = run / "eval" / "olmoe-paper"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny SFT run that pushes itself when it ends (`hub.push: true`), and a DPO run from it with an evaluation."""
    tmp = tmp_path_factory.mktemp("runs")
    hub = FakeHub()
    with pytest.MonkeyPatch.context() as mp:
        _point_client_at(mp, hub)
        recipe = TINY_SFT.format(rows=32, lb=0.01, z=0.001, out=tmp / "sft", steps=2)
        recipe += "hub: {push: true, repo_id: org/tiny-sft, license: apache-2.0}\n"
        sft.run(load_recipe(write_recipe(tmp / "sft.yaml", recipe)))
    dpo.run(load_recipe(write_recipe(tmp / "dpo.yaml", TINY_DPO.format(
        rows=16, lb=0.01, z=0.001, out=tmp / "dpo", steps=2, model=tmp / "sft"))))
    write_results(tmp / "dpo")
    yield {"sft": tmp / "sft", "dpo": tmp / "dpo", "stage_hub": hub}
    hub.close()


@pytest.fixture
def hub(monkeypatch):
    server = FakeHub(tokens={"hf_test_write": "write", "hf_test_read": "read"})
    _point_client_at(monkeypatch, server)
    yield server
    server.close()


def commit_requests(hub):
    return [r["status"] for r in hub.requests if r["method"] == "POST" and "/commit/" in r["path"]]


def test_stage_pushes_when_its_recipe_says_so(runs):
    hub = runs["stage_hub"]
    assert [c["repo"] for c in hub.commits] == ["org/tiny-sft"]
    files = hub.files("org/tiny-sft")
    assert MODEL_FILES <= set(files)
    card = files["README.md"].content.decode()
    assert "license: apache-2.0" in card and "No evaluation was run on this model" in card


def test_stage_without_a_token_stops_before_training(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    recipe = TINY_SFT.format(rows=16, lb=0.01, z=0.001, out=tmp_path / "sft", steps=2)
    recipe += "hub: {push: true, repo_id: org/x}\n"
    with pytest.raises(SystemExit, match="hub.push: no Hugging Face token found"):
        sft.run(load_recipe(write_recipe(tmp_path / "sft.yaml", recipe)))
    assert not (tmp_path / "sft" / "metrics.jsonl").exists()


def test_dpo_run_pushes_everything_in_one_commit(runs, hub, tmp_path):
    run = runs["dpo"]
    result = push_run(run, "org/tiny-dpo", options=FolderOptions(license="apache-2.0"))
    assert result.remote_was == "new" and commit_requests(hub) == [200]
    [commit] = hub.commits
    assert MODEL_FILES | {"eval/olmoe-paper/results.json", "assets/eval-olmoe-paper/scores.png"} <= set(commit["files"])
    assert "training_args.bin" not in commit["files"] and not any("samples" in f for f in commit["files"])
    assert {"model.safetensors", "assets/loss.png"} <= set(commit["lfs"])  # large/binary files through LFS
    assert "README.md" not in commit["lfs"]  # small text inline (base64) in the NDJSON commit
    pushed = hub.files("org/tiny-dpo")
    assert pushed["model.safetensors"].content == (run / "model.safetensors").read_bytes()
    card = pushed["README.md"].content.decode()
    assert "learning_rate: 0.01" in card  # the full resolved recipe
    assert "| `task:reverse` | prompt_chosen_rejected | 16 | 16 |" in card  # rows taken per source
    assert "*paper: +DPO (Instruct)*" in card and "| tiny-dpo (limit 4) | 52.0 ± 10.0" in card  # eval vs. paper
    # the dry run is exactly what was uploaded
    folder = dry_run(run, tmp_path / "out", "org/tiny-dpo", FolderOptions(license="apache-2.0"))
    assert commit["files"] == {f: (folder.path / f).stat().st_size for f in folder.files}


def test_dry_run_folder_loads_with_from_pretrained(runs, tmp_path):
    run, out = runs["dpo"], tmp_path / "out"
    dry_run(run, out, "org/tiny-dpo")
    model = AutoModelForCausalLM.from_pretrained(out)
    trained = AutoModelForCausalLM.from_pretrained(run).state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi\n<|assistant|>\n"
    # an existing non-empty folder is never written into
    with pytest.raises(PublishError, match="not empty"):
        dry_run(run, out, "org/tiny-dpo")
    assert (out / "README.md").is_file()


def test_card_metadata_parses_with_model_index_from_the_evaluation(runs, tmp_path):
    out = tmp_path / "out"
    dry_run(runs["dpo"], out, "org/tiny-dpo", FolderOptions(license="apache-2.0"))
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert {"adapt", "olmoe", "moe", "dpo"} <= set(meta["tags"])
    assert meta["adapt"]["fingerprint"] == model_fingerprint(str(runs["dpo"]))["sha256"]
    scores = {r.dataset_name: (r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert scores == {"mmlu": ("cais/mmlu", "acc", 52.0), "gsm8k": ("openai/gsm8k", "exact_match", 25.0),
                      "ifeval": ("google/IFEval", "prompt_level_loose_acc", 40.0)}
    assert meta["model-index"][0]["name"] == "tiny-dpo"
    for heading in ("## Training data", "### Router losses", "## Training curves", "## Hardware and time",
                    "## Reproduce", "## License"):
        assert heading in card.text
    assert "adapt dpo --config recipe.yaml" in card.text and "weight **0.001**" in card.text


def test_card_without_evaluation_says_so_and_names_the_hub_base(runs, tmp_path):
    """An SFT run from a Hub model with a Hub dataset, and no evaluation: base_model/datasets in the metadata, no
    model-index, and the card says no evaluation was run."""
    run = tmp_path / "sft"
    shutil.copytree(runs["sft"], run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"].update(name_or_path="allenai/OLMoE-1B-7B-0924", config=None)
    recipe["data"]["sources"] = [{"hub": "allenai/tulu-v3.1-mix-preview-4096-OLMoE", "split": "train"}]
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    dry_run(run, tmp_path / "out", "org/tiny-sft")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "allenai/OLMoE-1B-7B-0924"
    assert meta["datasets"] == ["allenai/tulu-v3.1-mix-preview-4096-OLMoE"]
    assert "model-index" not in meta and "license" not in meta
    assert "No evaluation was run on this model" in card.text and "No license was set" in card.text


def test_credentials_in_the_recipe_or_command_are_not_published(runs, tmp_path):
    run = tmp_path / "sft"
    shutil.copytree(runs["sft"], run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["training"]["hub_token"] = "hf_secret123"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    record = json.loads((run / "run.json").read_text())
    record["command"] += " training.hub_token=hf_secret123"
    (run / "run.json").write_text(json.dumps(record))
    folder = dry_run(run, tmp_path / "out", "org/x")
    assert not [f for f in folder.files if b"hf_secret123" in (folder.path / f).read_bytes()]
    published = yaml.safe_load((folder.path / "recipe.yaml").read_text())
    assert published["training"]["hub_token"] == "<redacted>" and published["training"]["learning_rate"] == 1e-2
    assert "training.hub_token=<redacted>" in (folder.path / "README.md").read_text()


def test_scores_of_other_weights_stay_out_of_the_metadata(runs, tmp_path):
    run = tmp_path / "dpo"
    shutil.copytree(runs["dpo"], run)
    write_results(run, sha256="0" * 64)
    dry_run(run, tmp_path / "out", "org/x")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "model-index" not in card.data.to_dict()
    assert "computed on other weights" in card.text


def test_a_suite_that_is_not_shipped_still_gives_a_table(runs, tmp_path):
    run = tmp_path / "dpo"
    shutil.copytree(runs["dpo"], run)
    shutil.rmtree(run / "eval")
    write_results(run, suite="my-suite")
    dry_run(run, tmp_path / "out", "org/x")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "| x (limit 4) | 52.0 ± 10.0 | 25.0 ± 10.0 | 40.0 ± 10.0 |" in card.text and "paper:" not in card.text
    assert len(card.data.eval_results) == 3


def test_transient_503_on_commit_is_retried_into_exactly_one_commit(runs, hub):
    hub.fail_next("commit", 503)
    push_run(runs["dpo"], "org/retry")
    assert commit_requests(hub) == [503, 200]
    assert len(hub.commits) == 1 and "model.safetensors" in hub.files("org/retry")


def test_a_persistent_failure_ends_in_one_line_after_the_retries(runs, hub, monkeypatch):
    hub.fail_next("commit", 503, times=push_module.RETRIES + 1)
    with pytest.raises(PublishError) as e:
        push_run(runs["dpo"], "org/down")
    message = str(e.value)
    assert f"after {push_module.RETRIES + 1} attempts" in message and "nothing was committed" in message
    assert "\n" not in message and hub.commits == []
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused
    with pytest.raises(PublishError, match="could not take the push"):
        push_run(runs["dpo"], "org/down")


def test_retries_stop_at_the_time_budget_and_say_so(monkeypatch):
    """Every upload failing, each attempt taking 23 s (huggingface_hub's own five retries): once took 313 s."""
    import types

    import httpx2

    clock = [0.0]
    monkeypatch.setattr(push_module, "time", types.SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)))
    started = []

    def upload():
        started.append(clock[0])
        clock[0] += 23
        raise httpx2.ConnectError("connection reset by peer")

    with pytest.raises(PublishError) as e:
        push_module._hub_call(upload, "org/down", 0.0)
    assert started == [0, 24, 49] and clock[0] <= push_module.RETRY_BUDGET_S + 23  # waits 1, 2; then 72 s + 4 > 60
    assert str(e.value).startswith("the Hub could not take the push to org/down after 3 attempts in 72 s (no retry "
                                   "starts after 60 s; connection reset by peer); nothing was committed. Fix: ")


@pytest.mark.parametrize("token, status, fix", [("hf_wrong", "401", "hf auth login"),
                                                 ("hf_test_read", "403", "write access")])
def test_auth_errors_are_one_clear_line_and_commit_nothing(runs, hub, monkeypatch, token, status, fix):
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(PublishError, match=status) as e:
        push_run(runs["dpo"], "org/denied")
    assert fix in str(e.value) and "\n" not in str(e.value)
    assert hub.commits == [] and commit_requests(hub) == []


def test_no_token_is_refused_before_any_request(runs, hub, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PublishError, match="HF_TOKEN"):
        push_run(runs["dpo"], "org/x")
    assert not [r for r in hub.requests if r["method"] == "POST"]


def test_a_different_model_is_only_replaced_with_force(runs, hub):
    hub.seed("org/taken", {"config.json": b"{}", "model.safetensors": b"other", "old.bin": b"x",
                           "README.md": b"---\nlicense: mit\n---\nsomeone else's model\n"})
    with pytest.raises(PublishError, match="already holds a different model: a model not pushed by adapt.*--force"):
        push_run(runs["dpo"], "org/taken")
    assert len(hub.commits) == 1  # the seed only
    assert push_run(runs["dpo"], "org/taken", force=True).remote_was == "replaced"
    assert hub.commits[-1]["deleted"] == ["old.bin"]  # the revision is now exactly the pushed folder
    again = push_run(runs["dpo"], "org/taken")  # the same model again needs no --force
    assert again.remote_was == "same" and not again.changed and len(hub.commits) == 2  # and commits nothing new
    with pytest.raises(PublishError, match="adapt run `dpo`"):
        push_run(runs["sft"], "org/taken")


def test_push_to_a_new_branch_and_through_the_command_line(runs, hub, tmp_path, capsys):
    from adapt.cli import main

    hub.seed("org/branchy", {"model.safetensors": b"main's model", "README.md": b"main\n"})
    main(["push", str(runs["dpo"]), "--repo-id", "org/branchy", "--revision", "dpo-v1", "--license", "mit"])
    assert "in one commit (repository was new branch)" in capsys.readouterr().out
    assert hub.commits[-1]["revision"] == "dpo-v1" and hub.files("org/branchy")["model.safetensors"].size == 12
    main(["push", str(runs["dpo"]), "--repo-id", "org/branchy", "--dry-run", str(tmp_path / "dry")])
    assert (tmp_path / "dry" / "README.md").is_file()


def test_a_single_large_weights_file_is_sharded(runs, tmp_path):
    out = tmp_path / "out"
    folder = dry_run(runs["dpo"], out, "org/x", FolderOptions(max_shard_size="100KB"))
    shards = [f for f in folder.files if f.startswith("model-") and f.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors.index.json" in folder.files
    assert "model.safetensors" not in folder.files
    model = AutoModelForCausalLM.from_pretrained(out)
    trained = AutoModelForCausalLM.from_pretrained(runs["dpo"]).state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_lora_run_pushes_its_adapter_or_the_merged_model(tmp_path, demo_tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_dir, run = tmp_path / "base", tmp_path / "lora"
    tiny_olmoe(seed=1).save_pretrained(base_dir)
    demo_tokenizer.save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)  # so that adapter_config.json names its base folder
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA's B starts at zero: make the adapter change something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(run)
    adapter = dry_run(run, tmp_path / "adapter", "org/lora")
    assert adapter.what == "adapter" and {"adapter_config.json", "adapter_model.safetensors"} <= set(adapter.files)
    assert ModelCard.load(tmp_path / "adapter" / "README.md").data.library_name == "peft"
    merged = dry_run(run, tmp_path / "merged", "org/lora", FolderOptions(what="merged"))
    assert "adapter_config.json" not in merged.files and "tokenizer.json" in merged.files  # the base's tokenizer
    assert "from the local model folder `base`" in (tmp_path / "merged" / "README.md").read_text()
    ids = torch.tensor([[3, 17, 42, 99, 5]])
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), run).eval()(ids).logits
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(PublishError, match="needs a LoRA run"):
        dry_run(tmp_path / "merged", tmp_path / "again", "org/x", FolderOptions(what="merged"))


def test_card_shows_what_adaptation_did_to_the_router_of_these_weights(runs, tmp_path):
    from adapt_eval.routing.report import TITLE, write_analysis
    from adapt_eval.routing.run import analyze

    run = tmp_path / "dpo"
    shutil.copytree(runs["dpo"], run)
    result = analyze({"sft": str(runs["sft"]), "dpo": str(run)}, {"reverse": "task:reverse"}, texts_per_domain=4,
                     log=lambda line: None)
    write_analysis(result, run / "analysis")
    dry_run(run, tmp_path / "out", "org/x")
    text = ModelCard.load(tmp_path / "out" / "README.md").text
    layers = result["saturation"]["sft->dpo"]
    assert f"## {TITLE}" in text
    assert "| sft → dpo | " + " | ".join(f"{layers[n]:.3f}" for n in sorted(layers)) + " |" in text
    for picture in ("saturation.png", "experts_sft.png", "experts_dpo.png", "analysis.json"):
        assert (tmp_path / "out" / "assets" / "router" / picture).is_file()
    assert "![saturation](assets/router/saturation.png)" in text

    result["per_model"]["dpo"]["fingerprint"]["sha256"] = "0" * 64  # an analysis of other weights
    (run / "analysis" / "analysis.json").write_text(json.dumps(result))
    dry_run(run, tmp_path / "stale", "org/x")
    text = ModelCard.load(tmp_path / "stale" / "README.md").text
    assert "router analysis of other weights" in text and "| sft → dpo |" not in text
    assert not (tmp_path / "stale" / "assets" / "router").exists()
