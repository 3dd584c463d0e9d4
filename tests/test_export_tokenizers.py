"""`adapt export gguf` with each pre-tokenizer llama.cpp reproduces (adapt/export/gguf_pretokenizers.py), checked
against llama.cpp itself: a tiny byte-level BPE per pre-tokenizer, with the pre-tokenizer spec of the real model
files that use it, trained on varied text, saved with a tiny OLMoE and exported in f32, must tokenize in llama.cpp
id for id as in transformers, on adapt.export.check's texts and on texts where the regexes differ; a pre-tokenization
llama.cpp has no name for is refused in one line, before anything is written."""

import json
import shutil
import unicodedata

import pytest
import torch

from adapt.export import check as lc
from adapt.export.architectures import ExportError
from adapt.export.gguf_file import export_gguf

# The Split regexes as the real tokenizer.json files write them (JSON-decoded); the files themselves were not at hand
# (no network): QWEN2 is transformers' Qwen2Tokenizer PRETOKENIZE_REGEX (models/qwen2/tokenization_qwen2.py, which
# builds Qwen's Split + ByteLevel(use_regex=False) + NFC pipeline), LLAMA3 its TikTokenConverter default
# (convert_slow_tokenizer.py; Llama 3's and GLM-4.5's regex), O200K and DeepSeek-V3's the "original regex from
# tokenizer.json" and the list in llama.cpp's src/llama-vocab.cpp (with literal CR/LF in DeepSeek-V3's third regex,
# as llama.cpp's copy has them).
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_V3 = [r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
               "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
               "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"]


def split(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def byte_level(use_regex, trim_offsets=True):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets, "use_regex": use_regex}


def sequence(*steps):
    return {"type": "Sequence", "pretokenizers": list(steps)}


NFC = {"type": "NFC"}
# llama.cpp pre-tokenizer name: (pre_tokenizer, normalizer, BPE ignore_merges), each as the model's tokenizer.json
CASES = {
    "olmo": (byte_level(True), None, False),  # OLMoE (GPT-NeoX's tokenizer), the demo tokenizer
    "refact": (sequence({"type": "Digits", "individual_digits": True}, byte_level(True)), None, False),  # Granite 3
    "qwen2": (sequence(split(QWEN2), byte_level(False, trim_offsets=False)), NFC, False),  # Qwen2.5, Qwen3
    "deepseek-v3": (sequence(*map(split, DEEPSEEK_V3), byte_level(False)), {"type": "Sequence", "normalizers": []},
                    False),  # DeepSeek-V3
    # GLM-4.5 (its ignore_merges inferred: llama.cpp's converter names GLM-4.5-Air's tokenizer "glm4"), Llama 3
    "glm4": (sequence(split(LLAMA3), byte_level(False)), None, True),
    "dbrx": (sequence(split(LLAMA3), byte_level(False)), None, False),  # the same regex without ignore_merges
    "gpt-4o": (sequence(split(O200K), byte_level(False)), None, False),  # GPT-OSS
}

# llama.cpp's own text for telling pre-tokenizers apart (conversion/base.py `get_vocab_base_pre`)
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
          "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
          "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
          "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
# Where the regexes differ: digit runs (1, 1-3 or all digits a piece), contractions in any case, CJK and kana (a
# DeepSeek-V3 split of their own), newline and space runs, camel case (o200k splits at case changes), code.
EXTRA = [CHKTXT, "7 42 123 1234 12345 123456 1234567 3.14159 0x1F 2024-06-01 v2.0",
         "It's he'LL we'Ve I'M they'D you're 'S 'tis rock'n'roll O'Neil's zqzq",
         "我想在apple工作1314151天～ ひらがなとカタカナ 한국어 テスト。",
         "line one\n\n  \n   indented\r\n\tTabbed\n\n\n    four spaces\n  ",
         "def f(x):\n    return {'a': x ** 2}  # 🚀🦙 ✅\n\tpass",
         "HTTPServer camelCase XMLHttpRequest ÀÉÎ naïve Straße über-cool"]
SPECIAL = ["<|endoftext|>", "<|startoftext|>"]
UNMERGED = "Ġzqzq"  # " zqzq" in the byte-level alphabet


def corpus() -> list[str]:
    """A few hundred varied lines: words, numbers of every length, contractions, code, CJK, emoji, space runs."""
    words = ["the", "model", "token", "expert", "router", "Hello", "world", "apple", "über", "naïve", "Straße",
             "данные", "модель", "我想", "工作", "天气", "ひらがな", "カタカナ", "한국어", "🚀", "🦙", "✅",
             "camelCase"]
    lines = []
    for i in range(300):
        w = [words[(i * k + 3) % len(words)] for k in (1, 5, 7, 11)]
        lines += [f"{w[0]} {w[1]}, {w[2]}'s {w[3]}!  {i} {i * 37} {i * 12345}",
                  f"def {w[0].lower()}_{i}(x):\n    return x * {i % 97} + {3.5 * i}  # it's {w[1]}\n",
                  f"I'll say {w[2]} we'VE {w[3]} they'D \t {i:05d}\n\n   {w[1]}{w[2]}{i % 10}",
                  f"#include <{w[0]}.h> $value_{i} @user 'twas 'tis {w[3]}-{w[1]} ({w[2]})."]
    return lines + EXTRA + lc.PLAIN


def tokenizer_for(pre_tokenizer: dict, normalizer: dict | None, ignore_merges: bool):
    """A byte-level BPE with this pipeline (vocabulary <= 512), trained on corpus(), as transformers wraps it."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": ignore_merges, "vocab": {}, "merges": []}}
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(), trainer)
    trained = json.loads(tokenizer.to_str())
    assert trained["model"]["ignore_merges"] == ignore_merges
    # a word no merge reaches: only a BPE that ignores merges takes it whole, as must llama.cpp (glm4, not dbrx)
    trained["model"]["vocab"][UNMERGED] = len(trained["model"]["vocab"])
    tokenizer = Tokenizer.from_str(json.dumps(trained))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIAL[1], eos_token=SPECIAL[0],
                                   pad_token=SPECIAL[0])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A saved tiny OLMoE whose vocabulary (512) covers every tokenizer here; each case copies it."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=512, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_experts=2, num_experts_per_tok=1, pad_token_id=0,
                         bos_token_id=1, eos_token_id=0, max_position_embeddings=512)
    OlmoeForCausalLM(config).save_pretrained(folder)
    return folder


def run_with(weights, tmp_path, pre_tokenizer, normalizer=None, ignore_merges=False):
    folder = tmp_path / "run"
    shutil.copytree(weights, folder)
    tokenizer = tokenizer_for(pre_tokenizer, normalizer, ignore_merges)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


@pytest.mark.parametrize("name", CASES)
def test_llama_cpp_tokenizes_as_transformers(name, weights, tmp_path, monkeypatch):
    import gguf

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[gguf]')")
    folder, tokenizer = run_with(weights, tmp_path, *CASES[name])
    done = export_gguf(folder, tmp_path / "m.gguf", "f32")
    field = gguf.GGUFReader(done.path).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == name
    assert all(unicodedata.is_normalized("NFC", t) for t in EXTRA)  # llama.cpp does not apply NFC (gguf_vocab.py)
    monkeypatch.setattr(lc, "PLAIN", lc.PLAIN + EXTRA)  # check.texts() reads it
    llm = lc.open_gguf(done.path)
    try:
        assert lc.tokenization_differences(tokenizer, llm) == []
    finally:
        llm.close()


@pytest.mark.parametrize("pre_tokenizer, ignore_merges, message", [
    (sequence(split(r"\p{N}{1,4}"), byte_level(False)), False,
     r"pre-tokenizer regex '\\p\{N\}\{1,4\}': none of the llama.cpp pre-tokenizers checked here \(olmo, .*\) has "
     "these regexes, under any of them llama.cpp would split text differently"),
    (sequence(split(QWEN2), byte_level(False)), True, "BPE ignore_merges True, but llama.cpp's pre-tokenizer with "
     "these regexes \\('qwen2'\\) applies the merges to every word: llama.cpp would tokenize some words differently"),
    (sequence({**split(QWEN2), "invert": True}, byte_level(False)), False, "Split .* \\(Isolated, inverted\\)"),
    (sequence(split(QWEN2), {"type": "Whitespace"}), False, "ending in ByteLevel"),
    (sequence({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}), False,
     "pre-tokenizer Metaspace, a SentencePiece-style BPE; llama.cpp needs a SentencePiece vocabulary \\('llama' "
     "tokenizer model with scores\\); export it with llama.cpp's convert_hf_to_gguf.py"),
])
def test_other_pre_tokenization_is_refused_before_writing(weights, tmp_path, pre_tokenizer, ignore_merges, message):
    folder, _ = run_with(weights, tmp_path, byte_level(True))
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"], spec["model"]["ignore_merges"] = pre_tokenizer, ignore_merges
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match=message) as refused:
        export_gguf(folder, tmp_path / "m.gguf", "f32")
    assert "\n" not in str(refused.value) and not (tmp_path / "m.gguf").exists()
