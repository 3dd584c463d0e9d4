"""Loss only on assistant tokens, checked token by token with OLMoE's real tokenizer through the toolkit's data path
(adapt.data.tokenize) and the SFT trainer's collator."""

import pytest
import torch

from adapt.config import load_recipe
from adapt.data.tokenizer import tulu_template
from conftest import TINY_SFT, tiny_olmoe, write_recipe


@pytest.fixture
def olmoe_tokenizer(shared):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(shared / "tokenizers/olmoe-gpt-neox-20b-pii-special.json"),
                                  eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|padding|>")
    return tok


@pytest.mark.parametrize("add_bos", [False, True])
def test_assistant_only_labels_token_by_token(olmoe_tokenizer, tmp_path, add_bos):
    from datasets import Dataset

    from adapt.data.tokenize import SOURCE_COLUMN, tokenize_mixture
    from adapt.trainers import AdaptSFTTrainer

    tok = olmoe_tokenizer
    tok.chat_template = tulu_template(add_bos=add_bos)
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4, of course."},
                {"role": "user", "content": "And 3+3?"},
                {"role": "assistant", "content": "6."}]
    recipe = write_recipe(tmp_path / "r.yaml", TINY_SFT.format(rows=4, lb=0.01, z=0.001, out=tmp_path / "o", steps=1))
    config = load_recipe(recipe, ["training.max_length=512"])
    assert config.data.assistant_only_loss  # the toolkit's SFT default
    rows = Dataset.from_list([{"messages": messages, SOURCE_COLUMN: 0}])
    tokenized, _ = tokenize_mixture(rows, tok, "sft", max_length=512, over_length="truncate",
                                    assistant_only_loss=config.data.assistant_only_loss)
    model = tiny_olmoe(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    trainer = AdaptSFTTrainer(model=model, args=config, train_dataset=tokenized.remove_columns(SOURCE_COLUMN),
                              processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]

    text = tok.decode(input_ids)
    expected_text = ("<|endoftext|>" if add_bos else "") + (
        "<|system|>\nYou are terse.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n4, of course.<|endoftext|>\n"
        "<|user|>\nAnd 3+3?\n<|assistant|>\n6.<|endoftext|>")
    assert text == expected_text
    trained = input_ids[labels != -100]
    # exactly the assistant contents with their EOS, nothing of the prompts, roles or separators
    assert tok.decode(trained) == "4, of course.<|endoftext|>6.<|endoftext|>"
    expected_ids = (tok("4, of course.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                    + tok("6.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    assert trained.tolist() == expected_ids
    assert torch.equal(labels[labels != -100], trained)
