"""The toolkit's tokenization gives exactly TRL's prepared rows (SFT, packed SFT, DPO), the over-length policy counts
what it does, and the summary's token statistics are right."""

import json

import pytest
import torch
from datasets import Dataset

from adapt.config import load_recipe
from adapt.data.formats import converter
from adapt.data.tokenize import SOURCE_COLUMN, pack, percentiles, tokenize_mixture
from adapt.data.tokenizer import tulu_template
from adapt.tasks import get_task
from adapt.trainers import AdaptDPOTrainer
from conftest import TINY_DPO, TINY_SFT, tiny_olmoe, write_recipe


def sft_trainer(tmp_path, tokenizer, rows, overrides=()):
    """The recipe's config, and TRL's own SFTTrainer preparing `rows` with the recipe's settings: the reference. (The
    toolkit's config skips TRL's preparation, because the toolkit's tokenization replaces it.)"""
    from trl import SFTConfig, SFTTrainer

    recipe = write_recipe(tmp_path / "sft.yaml", TINY_SFT.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "o", steps=1))
    config = load_recipe(recipe, list(overrides))
    assert config.data.assistant_only_loss and config.dataset_kwargs == {"skip_prepare_dataset": True}
    reference = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=config.max_length, packing=config.packing,
                          packing_strategy=config.packing_strategy, padding_free=config.padding_free,
                          assistant_only_loss=True, bf16=False, report_to=[])
    model = tiny_olmoe(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    return config, SFTTrainer(model=model, args=reference, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer)


def with_source(rows):
    return Dataset.from_list(rows).add_column(SOURCE_COLUMN, [0] * len(rows))


def olmoe_tokenizer(shared, add_bos=True):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(shared / "tokenizers/olmoe-gpt-neox-20b-pii-special.json"),
                                  eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|padding|>")
    tok.chat_template = tulu_template(add_bos=add_bos)
    return tok


def code_alpaca_rows(shared, n):
    convert = converter("alpaca", "sft")
    raw = json.loads((shared / "data/sft/code_alpaca_2k.json").read_text())
    return [convert(r) for r in raw if r["output"].strip()][:n]


@pytest.mark.parametrize("packing", [False, True])
def test_sft_rows_equal_trl_preparation_on_real_data(tmp_path, shared, packing):
    tok = olmoe_tokenizer(shared)
    rows = code_alpaca_rows(shared, 40)
    overrides = ["training.max_length=96"]  # short enough that some rows are truncated
    if packing:
        overrides += ["training.packing=true", "training.padding_free=true"]
    config, trainer = sft_trainer(tmp_path, tok, rows, overrides)
    ours, stats = tokenize_mixture(with_source(rows), tok, "sft", max_length=96, over_length="truncate",
                                   assistant_only_loss=True)
    assert stats[0]["truncated"] > 0
    ours = ours.remove_columns(SOURCE_COLUMN)
    if packing:
        ours = pack(ours, 96, config.packing_strategy)
    theirs = trainer.train_dataset
    if not packing:
        assert ours["input_ids"] == theirs["input_ids"] and ours["labels"] == theirs["labels"]
        return
    # Packed: the same documents with the same labels. The order inside the packs may differ because TRL's
    # best-fit-decreasing sorts on the untruncated lengths while our length policy truncates before packing, and
    # TRL packs truncated rows with no assistant token left (no loss, pure cost) where the policy drops and counts
    # them.
    trained = [d for d in documents(theirs) if any(label != -100 for label in d[1])]
    assert documents(ours) == trained
    assert stats[0]["dropped"] == {"no assistant tokens within max_length": len(documents(theirs)) - len(trained)}


def documents(packed):
    out = []
    for ids, labels, lengths in zip(packed["input_ids"], packed["labels"], packed["seq_lengths"]):
        start = 0
        for n in lengths:
            out.append((tuple(ids[start:start + n]), tuple(labels[start:start + n])))
            start += n
    return sorted(out)


def test_dpo_rows_equal_trl_preparation(tmp_path, demo_tokenizer):
    rows = get_task("reverse").preference_rows("train", 12)
    sft_recipe = write_recipe(tmp_path / "s.yaml", TINY_SFT.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "s",
                                                                   steps=1))
    model = tiny_olmoe(vocab_size=len(demo_tokenizer), pad_token_id=demo_tokenizer.pad_token_id,
                       eos_token_id=demo_tokenizer.eos_token_id)
    config = load_recipe(write_recipe(tmp_path / "d.yaml", TINY_DPO.format(
        rows=8, lb=0.01, z=0.001, out=tmp_path / "d", steps=1, model=sft_recipe)), check_paths=False)
    trainer = AdaptDPOTrainer(model=model, ref_model=tiny_olmoe(vocab_size=len(demo_tokenizer)), args=config,
                              train_dataset=Dataset.from_list(rows), processing_class=demo_tokenizer)
    ours, _ = tokenize_mixture(with_source(rows), demo_tokenizer, "dpo", max_length=None, over_length="truncate")
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert ours[column] == trainer.train_dataset[column]
    # and the trainer takes the tokenized rows as they are
    again = AdaptDPOTrainer(model=model, ref_model=tiny_olmoe(vocab_size=len(demo_tokenizer)), args=config,
                            train_dataset=ours.remove_columns(SOURCE_COLUMN), processing_class=demo_tokenizer)
    assert again.train_dataset["chosen_ids"] == ours["chosen_ids"]


def test_over_length_policy_counts_and_percentiles(demo_tokenizer):
    task = get_task("reverse")
    rows = task.sft_rows("train", 30)
    lengths = [len(demo_tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"]) for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the rows are longer
    over = sum(n > limit for n in lengths)
    assert 0 < over < len(rows)

    dropped, [d] = tokenize_mixture(with_source(rows), demo_tokenizer, "sft", max_length=limit, over_length="drop",
                                    assistant_only_loss=True)
    assert len(dropped) == d["rows"] == len(rows) - over and d["dropped"] == {"longer than max_length": over}
    assert d["tokens"] == sum(n for n in lengths if n <= limit) and d["truncated"] == 0
    assert d["length_percentiles"] == percentiles(lengths)

    truncated, [t] = tokenize_mixture(with_source(rows), demo_tokenizer, "sft", max_length=limit,
                                      over_length="truncate", assistant_only_loss=True)
    assert t["truncated"] == over and t["rows"] + sum(t["dropped"].values()) == len(rows)
    assert max(len(x) for x in truncated["input_ids"]) == limit
    # every kept row still trains on something; tokens are counted after truncation
    assert all(any(label != -100 for label in labels) for labels in truncated["labels"])
    assert t["tokens"] == sum(len(x) for x in truncated["input_ids"])
    assert t["trained_tokens"] == sum(sum(label != -100 for label in labels) for labels in truncated["labels"])


def test_truncation_that_leaves_no_assistant_token_drops_the_row(demo_tokenizer):
    row = {"messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "ok"}]}
    kept, [s] = tokenize_mixture(with_source([row, get_task("reverse").sft_rows("train", 1)[0]]), demo_tokenizer,
                                 "sft", max_length=48, over_length="truncate", assistant_only_loss=True)
    assert len(kept) == 1 and s["dropped"] == {"no assistant tokens within max_length": 1}


def test_percentiles_are_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}
    assert percentiles([]) == {}


def test_packed_rows_hold_every_kept_token(demo_tokenizer):
    rows = get_task("reverse").sft_rows("train", 50)
    kept, [s] = tokenize_mixture(with_source(rows), demo_tokenizer, "sft", max_length=64, over_length="truncate",
                                 assistant_only_loss=True)
    packed = pack(kept.remove_columns(SOURCE_COLUMN), 64, "bfd")
    assert len(packed) < len(kept)
    assert sum(len(x) for x in packed["input_ids"]) == s["tokens"]
    assert all(sum(lengths) == len(ids) for lengths, ids in zip(packed["seq_lengths"], packed["input_ids"]))
    assert torch.tensor([len(x) for x in packed["input_ids"]]).max() <= 64
