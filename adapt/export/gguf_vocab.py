"""The tokenizer inside a GGUF file: the byte-level BPE's tokens (padded to the model's vocabulary size), their
types, the merges, the pre-tokenizer llama.cpp should split text with, the special ids and the chat template.

llama.cpp tokenizes itself, from these keys: a tokenizer it cannot reproduce must be refused, not written. It
reproduces a byte-level BPE whose pre-tokenization (regexes, `ignore_merges`) is one of its named pre-tokenizers
(adapt/export/gguf_pretokenizers.py; the name follows the tokenizer, not the model family). A SentencePiece-style BPE
(byte fallback, `▁` for spaces: Mixtral's, Llama 2's) needs llama.cpp's "llama" tokenizer model with scores, which is
not written here; a normalizer other than NFC is refused. NFC itself is not applied by llama.cpp (as its own
converter for OLMoE and Qwen, which writes the same keys): text that is not already NFC may tokenize differently
there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adapt.export.architectures import ExportError
from adapt.export.gguf_pretokenizers import llama_cpp_pre_tokenizer

# HF's `{% generation %}` marks (assistant-only loss masks) render nothing; Jinja engines outside transformers may
# not know the tag, so each is written as a block that renders the same, whitespace control (`{%-`, `-%}`) kept.
GENERATION_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


SENTENCEPIECE_SPACE = "\u2581"  # `▁`, SentencePiece's space
SENTENCEPIECE_REFUSAL = ("llama.cpp needs a SentencePiece vocabulary ('llama' tokenizer model with scores); export it "
                         "with llama.cpp's convert_hf_to_gguf.py")
# normalizers llama.cpp's byte-level BPE matches: none, or NFC (not applied by llama.cpp: module note)
ACCEPTED_NORMALIZERS = (None, {"type": "NFC"}, {"type": "Sequence", "normalizers": []},
                        {"type": "Sequence", "normalizers": [{"type": "NFC"}]})


def read_tokenizer_json(folder: Path) -> dict:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no tokenizer.json (a fast tokenizer is needed: llama.cpp takes its vocabulary "
                          "and merges); save the run's tokenizer into the folder")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, norm = spec.get("model") or {}, spec.get("normalizer")
    if model.get("type") != "BPE":
        raise ExportError(f"{path}: a {model.get('type')} tokenizer; the GGUF export writes byte-level BPE only")
    sentencepiece = sentencepiece_sign(spec)
    if sentencepiece:
        raise ExportError(f"{path}: {sentencepiece}, a SentencePiece-style BPE; {SENTENCEPIECE_REFUSAL}")
    if model.get("dropout"):
        raise ExportError(f"{path}: BPE with dropout; llama.cpp's BPE has none")
    if norm not in ACCEPTED_NORMALIZERS:
        raise ExportError(f"{path}: normalizer {norm.get('type')}; llama.cpp would not apply it")
    try:
        llama_cpp_pre_tokenizer(spec.get("pre_tokenizer"), model.get("ignore_merges", False))
    except ExportError as e:
        raise ExportError(f"{path}: {e}") from None
    return spec


def sentencepiece_sign(spec: dict) -> str | None:
    """What marks the tokenizer as SentencePiece-style (a `Metaspace` pre-tokenizer, byte fallback, a normalizer
    writing `▁` for spaces), or None."""
    pre, norm = spec.get("pre_tokenizer") or {}, spec.get("normalizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if any(step.get("type") == "Metaspace" for step in steps):
        return "pre-tokenizer Metaspace"
    if (spec.get("model") or {}).get("byte_fallback"):
        return "BPE with byte_fallback"
    if SENTENCEPIECE_SPACE in json.dumps(norm, ensure_ascii=False):
        return f"normalizer {norm.get('type')} writing {SENTENCEPIECE_SPACE!r} for spaces"
    return None


def check_vocab_size(tokenizer, vocab_size: int) -> None:
    highest = max(tokenizer.get_vocab().values())
    if highest >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {highest} but the model's vocabulary is {vocab_size}")


def without_generation_tags(template: str) -> str:
    return GENERATION_TAG.sub(lambda m: f"{{%{m[1]} {'endif' if m[2] else 'if true'} {m[3]}%}}", template)


def chat_template(tokenizer) -> str | None:
    return without_generation_tags(tokenizer.chat_template) if tokenizer.chat_template else None


def write_vocab(writer, tokenizer, spec: dict, vocab_size: int) -> None:
    """The keys llama.cpp's converter writes for a byte-level BPE (conversion/base.py `_set_vocab_gpt2`), the
    pre-tokenizer named from `spec` (the tokenizer.json read_tokenizer_json accepted)."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):  # ids the tokenizer never produces (the model's padding rows) are UNUSED
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    pre = llama_cpp_pre_tokenizer(spec.get("pre_tokenizer"), spec["model"].get("ignore_merges", False))
    writer.add_tokenizer_pre(pre.name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    for role, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            add(token_id)
    adds_bos, adds_eos = special_tokens_added(tokenizer)
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(adds_eos)
    template = chat_template(tokenizer)
    if template:
        writer.add_chat_template(template)


def special_tokens_added(tokenizer) -> tuple[bool, bool]:
    """Whether the run's tokenizer puts BOS before / EOS after a plain text (its post-processor), measured: llama.cpp
    then does the same when asked to add special tokens."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos = bos is not None and full[:1] == [bos] and full[1:len(plain) + 1] == plain
    start = 1 if adds_bos else 0
    adds_eos = eos is not None and full[start:] == plain + [eos]
    return adds_bos, adds_eos
