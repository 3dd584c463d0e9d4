"""`adapt export gguf|ollama`, checked against llama.cpp itself (llama-cpp-python loads the file): tokenization id
for id, next-token logits, greedy continuation and the chat template, per export type; a LoRA run exported merged;
everything that cannot be exported refused before anything is written."""

import copy
import json

import pytest
import torch

from adapt.export import check as lc
from adapt.export.architectures import ExportError
from adapt.export.gguf_file import export_gguf
from adapt.export.ollama import TULU_GO, export_ollama


def needs_llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[gguf]')")


def tiny_config(tokenizer, **overrides):
    from transformers import OlmoeConfig

    fields = dict(vocab_size=320, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_experts=4, num_experts_per_tok=2, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, initializer_range=0.2,
                  max_position_embeddings=512)
    return OlmoeConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def tulu_tokenizer():
    from adapt.config.sections import ModelSection
    from adapt.data.tokenizer import load_tokenizer

    return load_tokenizer(ModelSection(tokenizer="builtin:demo", chat_template="tulu"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tulu_tokenizer):
    """A saved tiny OLMoE (weights N(0, 0.2): routing that depends on the token) with the demo tokenizer (vocabulary
    320 > its 299 tokens: llama.cpp gets padding rows too) and the tulu template."""
    from transformers import OlmoeForCausalLM

    folder = tmp_path_factory.mktemp("export") / "run"
    torch.manual_seed(0)
    model = OlmoeForCausalLM(tiny_config(tulu_tokenizer)).eval()
    model.save_pretrained(folder)
    tulu_tokenizer.save_pretrained(folder)
    return folder, model


def test_f32_export_is_what_transformers_computes(run, tulu_tokenizer, tmp_path):
    needs_llama_cpp()
    folder, model = run
    done = export_gguf(folder, tmp_path / "m.gguf", "f32")
    # embeddings, output norm and head; per layer q, k, v, o, the q/k norms, 2 norms, the router and 3 expert tensors
    assert done.tensors == 3 + 2 * 12
    llm = lc.open_gguf(done.path)
    try:
        assert lc.tokenization_differences(tulu_tokenizer, llm) == []
        prompt = tulu_tokenizer.apply_chat_template(lc.CONVERSATION, tokenize=False, add_generation_prompt=True)
        assert lc.chat_prompt(llm, lc.CONVERSATION) == prompt
        worst, scale = lc.logits_difference(model, tulu_tokenizer, llm)
        assert worst < 1e-4 and scale > 5  # measured 7.7e-6 on logits up to 6.9
        ours, theirs = lc.greedy(model, tulu_tokenizer, llm, prompt)
        assert ours == theirs and len(set(ours)) > 1
    finally:
        llm.close()


def rounded(model, dtype):
    """The model with its weights rounded as the file stores them (norms and the router stay float32)."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in copy_.named_parameters():
            if p.ndim >= 2 and not name.endswith("mlp.gate.weight"):
                p.copy_(p.to(dtype).float())
    return copy_


@pytest.mark.parametrize("type_, reference, tolerance", [
    # Measured on this model (max |logit difference| over every position of every text, logits up to 6.9):
    # f16 1.3e-2 against the float32 model; bf16 6.7e-2 against the model with bf16-rounded weights (1.4 against
    # the float32 one: rounding flips some tokens' experts); llama.cpp also rounds the activations in those matmuls.
    ("f16", None, 0.05), ("bf16", torch.bfloat16, 0.2)])
def test_half_precision_exports_within_the_measured_tolerance(run, tulu_tokenizer, tmp_path, type_, reference,
                                                              tolerance):
    needs_llama_cpp()
    folder, model = run
    done = export_gguf(folder, tmp_path / "m.gguf", type_)
    llm = lc.open_gguf(done.path)
    try:
        assert lc.tokenization_differences(tulu_tokenizer, llm) == []
        worst, _ = lc.logits_difference(rounded(model, reference) if reference else model, tulu_tokenizer, llm)
        assert worst < tolerance
    finally:
        llm.close()


def test_q8_0_stores_each_block_within_its_scale_and_runs(run, tulu_tokenizer, tmp_path):
    import gguf
    import numpy as np

    needs_llama_cpp()
    folder, model = run
    done = export_gguf(folder, tmp_path / "m.gguf", "q8_0")
    reader = gguf.GGUFReader(done.path)
    stored = {t.name: t for t in reader.tensors}
    assert stored["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # the router: exact
    gate = gguf.quants.dequantize(stored["blk.1.ffn_gate_exps.weight"].data, gguf.GGMLQuantizationType.Q8_0)
    original = model.model.layers[1].mlp.experts.gate_up_proj[:, :64].detach().numpy()  # [E, I, H], gate rows
    blocks = original.reshape(-1, 32)
    # Q8_0: 32 values share a scale d = max|w| / 127 stored as float16 (relative error 2^-11), each value an int8
    # step of d: off by half a step, plus up to 127 steps times the scale's own rounding.
    scale = np.abs(blocks).max(1, keepdims=True) / 127
    assert (np.abs(gate.reshape(-1, 32) - blocks) <= scale * (0.5 + 127 * 2**-11) + 1e-7).all()
    llm = lc.open_gguf(done.path)
    try:
        worst, _ = lc.logits_difference(model, tulu_tokenizer, llm)
        assert worst < 3.0  # measured 1.97 (logits up to 6.9): quantized weights and activations flip some routes
    finally:
        llm.close()


def test_a_lora_run_is_exported_merged(run, tulu_tokenizer, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    needs_llama_cpp()
    folder, _ = run
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), lora)
    adapted.save_pretrained(tmp_path / "lora")  # its adapter_config.json names `folder` as the base
    tulu_tokenizer.save_pretrained(tmp_path / "lora")
    done = export_gguf(tmp_path / "lora", tmp_path / "m.gguf", "f32")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "lora")
    merged = merged.merge_and_unload().eval()
    llm = lc.open_gguf(done.path)
    try:
        worst, _ = lc.logits_difference(merged, tulu_tokenizer, llm)
        assert worst < 1e-4
        base_worst, _ = lc.logits_difference(run[1], tulu_tokenizer, llm)
        assert base_worst > 1e-2  # the adapter is in the file, not just the base
    finally:
        llm.close()


def save_variant(tmp_path, tokenizer, name, **overrides):
    from transformers import AutoModelForCausalLM, OlmoeForCausalLM

    folder = tmp_path / name
    if overrides.pop("dense", False):  # a model of no MoE family the toolkit trains
        from transformers import LlamaConfig

        config = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=4)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    else:
        OlmoeForCausalLM(tiny_config(tokenizer, **overrides)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("variant, message", [
    ({"dense": True}, "model_type 'llama': no GGUF export for it yet (known: olmoe, qwen3_moe, qwen2_moe, mixtral, "
                      "deepseek_v3, glm4_moe, gpt_oss, granitemoe)"),
    ({"num_key_value_heads": 2}, "num_key_value_heads 2 != num_attention_heads 4"),
    ({"norm_topk_prob": True}, "norm_topk_prob true: llama.cpp's olmoe does not renormalise"),
    ({"clip_qkv": 8.0}, "clip_qkv 8.0"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope linear"),
    ({"hidden_act": "gelu"}, "hidden_act gelu"),
    ({"attention_bias": True}, "attention_bias true"),
])
def test_what_llama_cpp_would_run_differently_is_refused_before_writing(tmp_path, tulu_tokenizer, variant, message):
    folder = save_variant(tmp_path, tulu_tokenizer, "variant", **variant)
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_gguf(folder, tmp_path / "m.gguf", "f32")
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.partial").exists()


def test_bad_inputs_are_one_line_and_nothing_is_lost(run, tmp_path, monkeypatch):
    folder, _ = run
    existing = tmp_path / "mine.gguf"
    existing.write_bytes(b"the user's file")
    with pytest.raises(ExportError, match="exists; choose another --outfile or pass --force"):
        export_gguf(folder, existing, "f32")
    assert existing.read_bytes() == b"the user's file"
    with pytest.raises(ExportError, match="--type q4: choose one of auto, f32, f16, bf16, q8_0"):
        export_gguf(folder, tmp_path / "m.gguf", "q4")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ExportError, match="no tokenizer.json"):
        export_gguf(bare, tmp_path / "m.gguf", "f32")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Metaspace"}
    (bare / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match="pre-tokenizer Metaspace"):
        export_gguf(bare, tmp_path / "m.gguf", "f32")
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}
    (bare / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match="add_prefix_space True"):
        export_gguf(bare, tmp_path / "m.gguf", "f32")
    small = json.loads((folder / "config.json").read_text())
    (bare / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
    (bare / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**small, "vocab_size": 100}))
    with pytest.raises(ExportError, match="the tokenizer has ids up to 298 but the model's vocabulary is 100"):
        export_gguf(bare, tmp_path / "m.gguf", "f32")

    import adapt.export.gguf_file as gguf_file  # a failure half-way through writing leaves no file behind

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(gguf_file, "_converted", fail)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(folder, existing, "f32", force=True)
    assert existing.read_bytes() == b"the user's file" and not (tmp_path / "mine.gguf.partial").exists()


def test_auto_keeps_the_weights_own_dtype(tmp_path, tulu_tokenizer):
    import gguf
    from transformers import OlmoeForCausalLM

    folder = tmp_path / "bf16"
    OlmoeForCausalLM(tiny_config(tulu_tokenizer)).to(torch.bfloat16).save_pretrained(folder)
    tulu_tokenizer.save_pretrained(folder)
    done = export_gguf(folder, tmp_path / "m.gguf")
    assert done.type == "bf16"
    stored = {t.name: t.tensor_type for t in gguf.GGUFReader(done.path).tensors}
    assert stored["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.BF16


def test_ollama_folder_has_the_gguf_and_a_modelfile_in_the_runs_template(run, tulu_tokenizer, tmp_path, capsys):
    from adapt.cli import main

    folder, _ = run
    main(["export", "ollama", str(folder), "--output", str(tmp_path / "ollama"), "--name", "tiny"])
    out = capsys.readouterr().out
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert "FROM ./model.gguf\n" in modelfile
    assert f'TEMPLATE """{TULU_GO.replace("@EOS@", "<|endoftext|>")}"""\n' in modelfile
    assert modelfile.endswith('PARAMETER stop "<|endoftext|>"\n')
    assert (tmp_path / "ollama" / "model.gguf").read_bytes()[:4] == b"GGUF"
    assert f"ollama create tiny -f {tmp_path / 'ollama' / 'Modelfile'}" in out
    with pytest.raises(SystemExit, match="exists and is not empty"):
        main(["export", "ollama", str(folder), "--output", str(tmp_path / "ollama")])

    other = tmp_path / "chatml"
    tulu_tokenizer.save_pretrained(other)
    (other / "config.json").write_text((folder / "config.json").read_text())
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}")
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="not one the toolkit ships"):
        export_ollama(other, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def test_the_command_line_says_what_it_wrote(run, tmp_path, capsys):
    from adapt.cli import main

    folder, _ = run
    main(["export", "gguf", str(folder), "--outfile", str(tmp_path / "m.gguf"), "--type", "f16"])
    # the kinds are read back from the file: the 2-D weights in f16, 1-D tensors, norms and routers in f32
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'm.gguf'} (f16, 27 tensors: 16 F16, 11 F32; ")
    with pytest.raises(SystemExit, match="^error: .*m.gguf exists"):
        main(["export", "gguf", str(folder), "--outfile", str(tmp_path / "m.gguf")])


def test_check_compares_the_file_with_transformers_in_llama_cpp(run, tmp_path, capsys):
    from adapt.cli import main

    needs_llama_cpp()
    folder, _ = run
    main(["export", "gguf", str(folder), "--outfile", str(tmp_path / "m.gguf"), "--check"])
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines[0] == "  tokenization: equal on every text"
    assert lines[1].startswith("  logits: max |transformers - llama.cpp| ") and float(lines[1].split()[5]) < 1e-4
    assert lines[2:] == ["  greedy 16 tokens: 16 agree before the first difference", "  chat template: the same prompt"]


def k_quant_run(folder, tokenizer):
    """A tiny OLMoE whose rows are 256 wide, so every 2-D tensor is a real K-quant (llama.cpp falls back to Q5_0 and
    friends for rows that are not a multiple of its 256-value super block), with weights N(0, 0.02)."""
    from transformers import OlmoeForCausalLM

    torch.manual_seed(0)
    model = OlmoeForCausalLM(tiny_config(tokenizer, hidden_size=256, intermediate_size=256, initializer_range=0.02))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.mark.parametrize("type_, expert_kind", [("q4_k_m", "Q4_K"), ("q6_k", "Q6_K")])
def test_k_quants_come_from_llama_cpps_quantizer_and_check_within_their_tolerance(tulu_tokenizer, tmp_path, type_,
                                                                                 expert_kind, capsys):
    import gguf

    from adapt.cli import main

    needs_llama_cpp()
    model = k_quant_run(tmp_path / "run", tulu_tokenizer)
    main(["export", "gguf", str(tmp_path / "run"), "--outfile", str(tmp_path / "m.gguf"), "--type", type_])
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert stored["blk.0.ffn_gate_exps.weight"] == expert_kind and stored["blk.0.ffn_gate_inp.weight"] == "F32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "run"]  # the float file it came from is gone
    result = lc.check_gguf(tmp_path / "run", tmp_path / "m.gguf", type_, model=model)
    # measured: q4_k_m 0.041 / 0.259 = 0.16, q6_k 0.050 (tolerances 0.25 and 0.1)
    assert result.passed() and 0.01 < result.relative_difference <= lc.RELATIVE_TOLERANCE[type_]
    assert result.max_logit_difference > 1e-3  # rounded, really: not the float file


def test_a_k_quant_outside_its_tolerance_fails_the_check(tulu_tokenizer, tmp_path, monkeypatch, capsys):
    from adapt.cli import main

    needs_llama_cpp()
    k_quant_run(tmp_path / "run", tulu_tokenizer)
    monkeypatch.setitem(lc.RELATIVE_TOLERANCE, "q4_k_m", 0.01)  # below what 4 bits can give (measured 0.16)
    with pytest.raises(SystemExit, match="does not compute what transformers computes"):
        main(["export", "gguf", str(tmp_path / "run"), "--outfile", str(tmp_path / "m.gguf"), "--type", "q4_k_m",
              "--check"])
    assert "(tolerance for q4_k_m: 0.01)" in capsys.readouterr().out
