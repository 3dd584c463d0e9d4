"""Run under `torchrun --nproc_per_node 2`: an OLMoE model under DeepSpeed ZeRO-2 with expert parallelism 2 (the
toolkit's preset and router-logit recorder) against the same model in one process, then the export back to the
transformers layout. Writes `<out>/rank<r>.json` per rank (tests/test_scaleout.py reads them).

    torchrun --nproc_per_node 2 tests/scripts/ep_parity.py OUT_DIR [zero2|zero3]
"""

import json
import sys
from pathlib import Path

import deepspeed
import torch
from transformers import OlmoeConfig, OlmoeForCausalLM

from adapt.parallel import deepspeed_config
from adapt.parallel.autoep import hf_state_dict, keep_router_logits, register_olmoe_preset

deepspeed.init_distributed(dist_backend="gloo")
rank = torch.distributed.get_rank()
config = OlmoeConfig(vocab_size=128, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                     num_experts=8, num_experts_per_tok=2, pad_token_id=0, eos_token_id=1)
torch.manual_seed(0)
model = OlmoeForCausalLM(config)
batch = torch.randint(2, 128, (2, 12), generator=torch.Generator().manual_seed(rank))
with torch.no_grad():
    reference = model(input_ids=batch, labels=batch, output_router_logits=True)

register_olmoe_preset()
keep_router_logits(model)
ds = deepspeed_config(sys.argv[2] if len(sys.argv) > 2 else "zero2", 2)
ds.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1, gradient_clipping=1.0,
          bf16={"enabled": False})
ds["optimizer"]["params"] = {"lr": 1e-2, "torch_adam": True}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
keep_router_logits(engine.module)  # the reference forward above installed hooks on the replaced blocks
out = engine(input_ids=batch, labels=batch, output_router_logits=True)
result = {"rank": rank, "autoep": type(engine.module.model.layers[0].mlp).__name__,
          "logits_diff": (out.logits - reference.logits).abs().max().item(),
          "loss_diff": abs(out.loss.item() - reference.loss.item()),
          "aux_loss_diff": abs(out.aux_loss.item() - reference.aux_loss.item()),
          "router_logits_diff": max((a - b).abs().max().item() for a, b in zip(out.router_logits,
                                                                              reference.router_logits))}
engine.backward(out.loss)
engine.step()
engine.eval()
with torch.no_grad():
    trained = engine(input_ids=batch).logits
state = hf_state_dict(engine.module, 2)  # collective
exported = OlmoeForCausalLM(config)
missing, unexpected = exported.load_state_dict(state, strict=False)
with torch.no_grad():
    result["export_logits_diff"] = (exported.eval()(input_ids=batch).logits - trained).abs().max().item()
result["export_missing"], result["export_unexpected"] = list(missing), list(unexpected)
result["trained_changed"] = (trained - reference.logits).abs().max().item()
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(result))
sys.exit(0)
