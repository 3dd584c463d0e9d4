"""The LoRA merge gate (adapt.model.lora.merge_proven): for every family, a LoRA on attention, the fused experts
(`target_parameters`) and the router, merged, computes what base + adapter computes through PEFT; a merge that does
not is stopped with the numbers before any merged model is saved or exported."""

import json

import pytest
import torch

from adapt.config.families import FAMILIES
from adapt.model.lora import MERGE_TOLERANCE, MergeMismatch, load_merged_adapter
from tiny_families import TINY

PROBE = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(7))


def lora_run(tmp_path, family: str):
    """A saved tiny base of the family and a saved adapter on it whose every LoRA matrix is random (B too, so the
    adapter changes the model) and whose router copy is moved off the base; (base folder, adapter folder)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, vocab_size=128, initializer_range=0.2, eos_token_id=0, bos_token_id=0,
                                  pad_token_id=1, **TINY[family])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                      **FAMILIES[family].lora_kwargs(["attention", "experts", "router"]))
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), lora)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.2)
    adapted.save_pretrained(tmp_path / "lora")
    return tmp_path / "base", tmp_path / "lora"


def logits(model):
    with torch.no_grad():
        return model.float().eval()(input_ids=PROBE).logits


@pytest.mark.parametrize("family", list(TINY))
def test_the_merged_model_computes_base_plus_adapter(tmp_path, family):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter = lora_run(tmp_path, family)
    unmerged = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter))
    merged = logits(load_merged_adapter(str(adapter), "auto"))
    plain = logits(AutoModelForCausalLM.from_pretrained(base))
    scale = float(unmerged.abs().max())
    assert float((merged - unmerged).abs().max()) <= MERGE_TOLERANCE * scale  # measured <= 2e-6 of the scale
    assert float((merged - plain).abs().max()) > 0.05 * scale  # the adapter is merged in, not dropped


def scramble_experts(monkeypatch):
    """PEFT's merge made wrong the way the upstream bug did it: the experts' merged weights of every layer come out
    in the wrong order (each expert gets its neighbour's delta)."""
    from peft.tuners.lora import LoraModel

    merge = LoraModel.merge_and_unload

    def scrambled(self, *args, **kwargs):
        model = merge(self, *args, **kwargs)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("experts.gate_up_proj"):
                    p.copy_(p.roll(1, dims=0))
        return model

    monkeypatch.setattr(LoraModel, "merge_and_unload", scrambled)


def test_a_wrong_merge_stops_the_export_and_the_merged_push_with_the_numbers(tmp_path, monkeypatch):
    from adapt.export.architectures import ExportError
    from adapt.export.gguf_file import load_weights
    from adapt.hub.folder import PublishError, _merge_lora

    _, adapter = lora_run(tmp_path, "olmoe")
    scramble_experts(monkeypatch)
    with pytest.raises(MergeMismatch, match=r"changes the logits by [0-9.e+-]+ \(logits up to"):
        load_merged_adapter(str(adapter), "auto")
    with pytest.raises(ExportError, match="PEFT's merge is wrong for this model.*nothing was exported"):
        load_weights(adapter)
    with pytest.raises(PublishError, match="PEFT's merge is wrong"):
        _merge_lora(adapter, tmp_path / "merged", "5GB")
    assert not (tmp_path / "merged").exists() or not any((tmp_path / "merged").iterdir())


def test_the_merged_model_takes_the_bases_saved_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    base, adapter = lora_run(tmp_path, "olmoe")
    AutoModelForCausalLM.from_pretrained(base).to(torch.bfloat16).save_pretrained(tmp_path / "base")
    assert json.loads((tmp_path / "base" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_merged_adapter(str(adapter), "auto").dtype == torch.bfloat16
    assert load_merged_adapter(str(adapter), torch.float32).dtype == torch.float32
