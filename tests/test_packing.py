"""Padding-free packing: the same examples give the same loss packed or padded, and the router losses see every real
token and no padding."""

import pytest
import torch

from adapt.config import load_recipe
from adapt.data.prepare import prepare_data
from adapt.trainers import AdaptSFTTrainer
from conftest import TINY_SFT, tiny_olmoe, write_recipe


def trainer_for(tmp_path, tokenizer, packing: bool, name: str):
    """The recipe's 8 `reverse` rows, prepared by the toolkit's data path (packed or not), in an SFT trainer."""
    recipe = write_recipe(tmp_path / f"{name}.yaml",
                          TINY_SFT.format(rows=8, lb=0.01, z=0.1, out=tmp_path / name, steps=1))
    overrides = ["training.max_length=512", "training.per_device_train_batch_size=8"]
    if packing:
        overrides += ["training.packing=true", "training.padding_free=true"]
    config = load_recipe(recipe, overrides)
    model = tiny_olmoe(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, num_hidden_layers=2)
    rows = prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer, use_cache=False).train
    return AdaptSFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)


def test_packed_loss_equals_padded_loss(tmp_path, demo_tokenizer):
    padded = trainer_for(tmp_path, demo_tokenizer, packing=False, name="padded")
    packed = trainer_for(tmp_path, demo_tokenizer, packing=True, name="packed")
    results = {}
    for name, trainer in (("padded", padded), ("packed", packed)):
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        stats = trainer._stats
        results[name] = (batch, loss, trainer._router_metrics["train:z_loss"][-1].item(), stats)
    padded_batch, packed_batch = results["padded"][0], results["packed"][0]
    assert "attention_mask" in padded_batch and (padded_batch["attention_mask"] == 0).any()  # really padded
    assert packed_batch["input_ids"].shape[0] == 1 and "position_ids" in packed_batch  # really one packed row
    real_tokens = int(padded_batch["attention_mask"].sum())
    assert packed_batch["input_ids"].shape[1] == real_tokens  # no padding in the packed row

    # the router losses and statistics count exactly the real tokens in both layouts
    assert results["packed"][3].num_tokens == results["padded"][3].num_tokens == real_tokens
    assert torch.equal(results["packed"][3].tokens_per_expert_LE, results["padded"][3].tokens_per_expert_LE)
    assert results["packed"][2] == pytest.approx(results["padded"][2], rel=1e-5)  # z-loss
    assert results["packed"][1] == pytest.approx(results["padded"][1], rel=1e-5)  # LM + load balancing + z-loss
