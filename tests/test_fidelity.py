"""Token-level fidelity to open-instruct's encoding of the published OLMoE runs, with OLMoE's real tokenizer named
as the Hub's is: EOS and pad, no BOS.

The reference encoder below is written from the description of open-instruct's `finetune.py` / `dpo_tune.py` (August
2024, the code of the released run): every message stripped, the tulu format, the whole text stripped, `--add_bos`
with EOS as BOS, and a label mask computed by tokenizing message prefixes *without* the BOS, so that every mask
boundary lands one token early (the `\\n` after `<|assistant|>` is trained, the `\\n` after an assistant's EOS is
not).
"""

import json
import logging

import pytest

from adapt.config import load_recipe
from adapt.data.prepare import prepare_data
from adapt.data.tokenizer import load_tokenizer

CONVERSATIONS = [
    [{"role": "system", "content": "  You are terse.\n\n"},
     {"role": "user", "content": "\tWhat is 2+2?  "},
     {"role": "assistant", "content": "\n4, of course.\n"},
     {"role": "user", "content": "And 3+3?\n\n\n"},
     {"role": "assistant", "content": "   6.   "}],
    [{"role": "user", "content": "Write a haiku about routers.\n"},
     {"role": "assistant",
      "content": "Tokens choose their paths\n  eight of sixty-four experts\nbalance keeps them fair\n"}],
    [{"role": "user", "content": "   "  + "x " * 5 + "\n  indented\n\tcode:\n    def f():\n        return 1\n"},
     {"role": "assistant", "content": "```python\ndef f():\n    return 1\n```\n\n"},
     {"role": "user", "content": "Thanks — and in Rust? «ünïcödé»"},
     {"role": "assistant", "content": " fn f() -> i32 { 1 } "}],
]


def reference_encode(messages, tokenizer, max_length, add_bos=True):
    """open-instruct's encode_with_messages_format, as described: (input_ids, labels)."""
    def concat(msgs):
        text = ""
        for m in msgs:
            if m["role"] == "system":
                text += "<|system|>\n" + m["content"].strip() + "\n"
            elif m["role"] == "user":
                text += "<|user|>\n" + m["content"].strip() + "\n"
            else:
                text += "<|assistant|>\n" + m["content"].strip() + tokenizer.eos_token + "\n"
        return text

    def n_tokens(text):
        return len(tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"])

    text = concat(messages).strip()
    if add_bos:
        text = tokenizer.eos_token + text  # the tokenizer has no BOS: open-instruct uses EOS
    ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    labels = list(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else n_tokens(concat(messages[:i]))  # prefixes without the BOS
        so_far = concat(messages[: i + 1])
        if i < len(messages) - 1 and messages[i + 1]["role"] == "assistant":
            so_far += "<|assistant|>\n"
        end = n_tokens(so_far)
        labels[start:end] = [-100] * len(labels[start:end])
        if end >= max_length:
            break
    return ids, labels


@pytest.fixture
def olmoe_tokenizer_file(shared):
    return shared / "tokenizers/olmoe-gpt-neox-20b-pii-special.json"


def sft_recipe(tmp_path, tokenizer_file, max_length=512, *overrides, stage="sft", rows=None):
    data = tmp_path / f"{stage}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for row in rows if rows is not None else [{"messages": c} for c in CONVERSATIONS]:
            f.write(json.dumps(row) + "\n")
    text = f"""
stage: {stage}
model:
  config: {{hidden_size: 32, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 4, num_experts: 4,
           num_experts_per_tok: 2}}
  tokenizer: {tokenizer_file}
  special_tokens: {{eos_token: "<|endoftext|>", pad_token: "<|padding|>"}}   # no BOS, as the Hub's OLMoE tokenizer
  chat_template: tulu
  add_bos: true
data:
  sources: [{{path: {data}}}]
  cache: false
training: {{output_dir: {tmp_path / 'out'}, max_length: {max_length}, bf16: false}}
"""
    path = tmp_path / f"{stage}.yaml"
    path.write_text(text, encoding="utf-8")
    return load_recipe(path, list(overrides), check_output=False)


def prepared(config):
    tokenizer = load_tokenizer(config.model)
    layout = config.sequence_layout()
    return tokenizer, prepare_data(config.stage, config.data, layout, tokenizer, use_cache=False).train


@pytest.mark.parametrize("max_length", [512, 40])  # 40 truncates the long conversations mid-turn
def test_sft_tokens_and_labels_equal_open_instruct(tmp_path, olmoe_tokenizer_file, max_length):
    config = sft_recipe(tmp_path, olmoe_tokenizer_file, max_length, "data.train_assistant_newline=true")
    assert config.data.strip  # the default with the tulu template
    tokenizer, rows = prepared(config)
    assert tokenizer.bos_token_id == tokenizer.eos_token_id  # EOS as BOS
    expected = [reference_encode(c, tokenizer, max_length) for c in CONVERSATIONS]
    expected = [e for e in expected if any(label != -100 for label in e[1])]  # open-instruct drops label-less rows
    assert [(r["input_ids"], r["labels"]) for r in rows] == expected
    assert all(r["input_ids"][0] == tokenizer.eos_token_id for r in rows)


def test_the_assistant_newline_is_the_one_named_difference(tmp_path, olmoe_tokenizer_file):
    tokenizer, rows = prepared(sft_recipe(tmp_path, olmoe_tokenizer_file))  # train_assistant_newline: false
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for row, conversation in zip(rows, CONVERSATIONS):
        ids, labels = reference_encode(conversation, tokenizer, 512)
        assert row["input_ids"] == ids
        differ = [i for i, (a, b) in enumerate(zip(row["labels"], labels)) if a != b]
        turns = sum(m["role"] == "assistant" for m in conversation)
        assert len(differ) == turns  # one token per assistant turn ...
        for i in differ:  # ... the `\n` closing `<|assistant|>\n`, trained by open-instruct only
            assert row["labels"][i] == -100 and labels[i] == ids[i] and [ids[i]] == newline
            assert tokenizer.decode(ids[max(0, i - 5): i + 1]).endswith("<|assistant|>\n")


def test_unstripped_text_is_kept_when_asked(tmp_path, olmoe_tokenizer_file):
    tokenizer, rows = prepared(sft_recipe(tmp_path, olmoe_tokenizer_file, 512, "data.strip=false"))
    assert tokenizer.decode(rows[0]["input_ids"]).startswith("<|endoftext|><|system|>\n  You are terse.\n\n\n")


def test_dpo_prompt_starts_with_eos_as_bos_and_matches_open_instruct(tmp_path, olmoe_tokenizer_file):
    pairs = [{"prompt": c[:-1], "chosen": [c[-1]], "rejected": [{"role": "assistant", "content": "  No.\n"}]}
             for c in CONVERSATIONS]
    config = sft_recipe(tmp_path, olmoe_tokenizer_file, 512, stage="dpo", rows=pairs)
    tokenizer, rows = prepared(config)
    for row, pair in zip(rows, pairs):
        assert row["prompt_ids"][0] == tokenizer.eos_token_id
        for side in ("chosen", "rejected"):
            ids, _ = reference_encode(pair["prompt"] + pair[side], tokenizer, 512)
            assert row["prompt_ids"] + row[f"{side}_ids"] == ids


def test_saved_tokenizer_keeps_eos_as_bos_and_says_so_once(tmp_path, olmoe_tokenizer_file, caplog, monkeypatch):
    from transformers import AutoTokenizer

    from adapt.data import tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "_ANNOUNCED", set())  # as in a fresh process
    config = sft_recipe(tmp_path, olmoe_tokenizer_file)
    with caplog.at_level(logging.WARNING, logger="adapt.data.tokenizer"):
        tokenizer = load_tokenizer(config.model)
        load_tokenizer(config.model)
    said = [r.getMessage() for r in caplog.records if "as BOS" in r.getMessage()]
    assert len(said) == 1 and "<|endoftext|>" in said[0]
    tokenizer.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again.bos_token == again.eos_token == "<|endoftext|>"
    prompt = again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True,
                                       return_dict=True)["input_ids"]
    assert prompt[0] == again.eos_token_id  # evaluation prompts start as training examples did


def test_a_tokenizer_without_bos_or_eos_is_refused(tmp_path, olmoe_tokenizer_file):
    from adapt.config.sections import ModelSection

    section = ModelSection(tokenizer=str(olmoe_tokenizer_file), add_bos=True,
                           special_tokens={"pad_token": "<|padding|>"})
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        load_tokenizer(section)
