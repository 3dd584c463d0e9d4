"""The whole offline pipeline, as `make demo` runs it: the numbers must show real learning."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_demo_pipeline_shows_sft_and_dpo_gains(tmp_path, capsys):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "adapt.cli", "demo", "--output", str(out), "--eval-items", "100"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a quiet console: no library warnings, no progress-bar redraws (not a terminal), one line per logging step
    console = proc.stdout + proc.stderr
    assert "Warning" not in console and "WARNING" not in console and "it/s]" not in console, console[:3000]
    assert "step 500/500 (epoch 4.00)  loss " in console
    report = json.loads((out / "report.json").read_text())
    base, sft, dpo = (report["stages"][k] for k in ("base", "sft", "dpo"))
    assert sft["task_accuracy"] > base["task_accuracy"] + 0.5
    assert dpo["preference_accuracy"] > sft["preference_accuracy"] + 0.1
    assert dpo["task_accuracy"] > 0.5  # DPO learned the preference without forgetting the task
    assert "| task_accuracy |" in (out / "report.md").read_text()
    # The router analysis: SFT moved the router (saturation below 1), and the report and the card show it.
    analysis = json.loads((out / "dpo" / "analysis" / "analysis.json").read_text())
    assert max(analysis["saturation"]["base->sft"].values()) < 1.0
    assert "## What adaptation did to the router" in (out / "report.md").read_text()
    # The commands after the demo run in this process (the `adapt` command line's own entry, `adapt.cli.main`): a
    # new Python importing torch, transformers and llama.cpp for each is what they would add, not what is checked.
    cli(capsys, "push", str(out / "dpo"), "--repo-id", "org/demo", "--dry-run", str(tmp_path / "repo"))
    assert "## What adaptation did to the router" in (tmp_path / "repo" / "README.md").read_text()
    assert (tmp_path / "repo" / "assets" / "router" / "saturation.png").is_file()
    for stage in ("base", "sft", "dpo"):
        assert (out / stage / "config.json").exists()
    check_exports(out, tmp_path, capsys)
    # a second run refuses to replace the first
    again = subprocess.run([sys.executable, "-m", "adapt.cli", "demo", "--output", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "--overwrite" in again.stderr


def cli(capsys, *args: str) -> str:
    """`adapt ARGS...` in this process; what it printed. A failure is its SystemExit, with its message."""
    from adapt.cli import main

    capsys.readouterr()
    main(list(args))
    return capsys.readouterr().out


def check_exports(out, tmp_path, capsys):
    """The demo's DPO model runs in llama.cpp as in transformers (f32 export), its 4-bit quantization within
    tolerance, and the Ollama folder. (The SFT model is the same architecture, tokenizer and template, so its export
    is the same code on other numbers: the DPO model's is checked.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapt.export import check as lc

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[gguf]')")
    gguf = tmp_path / "dpo.gguf"
    cli(capsys, "export", "gguf", str(out / "dpo"), "--outfile", str(gguf))
    tokenizer = AutoTokenizer.from_pretrained(out / "dpo")
    model = AutoModelForCausalLM.from_pretrained(out / "dpo").eval()
    llm = lc.open_gguf(gguf)
    try:
        assert lc.tokenization_differences(tokenizer, llm) == []
        prompt = tokenizer.apply_chat_template(lc.CONVERSATION, tokenize=False, add_generation_prompt=True)
        assert lc.chat_prompt(llm, lc.CONVERSATION) == prompt
        assert lc.logits_difference(model, tokenizer, llm)[0] < 1e-4
        ours, theirs = lc.greedy(model, tokenizer, llm, prompt)
        assert ours == theirs
    finally:
        llm.close()
    # a 4-bit K-quant of the demo model, made by llama.cpp's quantizer, within its stated tolerance (the demo's
    # 96-wide rows are not a multiple of 256, so llama.cpp falls back to Q5_0/Q5_1 for most tensors, and says so)
    printed = cli(capsys, "export", "gguf", str(out / "dpo"), "--outfile", str(tmp_path / "q4.gguf"), "--type",
                  "q4_k_m", "--check")
    assert "(q4_k_m, 27 tensors: " in printed and "tolerance for q4_k_m: 0.25" in printed, printed
    printed = cli(capsys, "export", "ollama", str(out / "dpo"), "--output", str(tmp_path / "ollama"))
    assert "ollama create dpo -f" in printed and (tmp_path / "ollama" / "model.gguf").is_file()
