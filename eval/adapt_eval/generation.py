"""Model calls the harness needs: batched greedy generation and summed completion log-probabilities, both through
the model's own chat template (so a model is always prompted the way it was trained)."""

from __future__ import annotations

import torch


def _prompt_text(tokenizer, user: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


def _no_router_logits(model) -> dict:
    """MoE configs saved mid-training may ask for router logits (and an aux loss) on every forward; not here."""
    return {"output_router_logits": False} if hasattr(model.config, "output_router_logits") else {}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy completions for user prompts (left-padded batches, decoding stops at EOS)."""
    tokenizer.padding_side = "left"
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [_prompt_text(tokenizer, p) for p in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, **_no_router_logits(model),
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [text.strip() for text in out]


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: list[str], completions: list[str],
                        batch_size: int = 64) -> list[float]:
    """Sum over completion tokens (EOS included) of log p(token | prompt, earlier tokens), for each pair."""
    model.eval()
    scores = []
    for start in range(0, len(prompts), batch_size):
        rows, prompt_lens = [], []
        for user, completion in zip(prompts[start:start + batch_size], completions[start:start + batch_size]):
            prompt_ids = tokenizer(_prompt_text(tokenizer, user), add_special_tokens=False)["input_ids"]
            full = tokenizer.apply_chat_template([{"role": "user", "content": user},
                                                  {"role": "assistant", "content": completion}], tokenize=False)
            full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            if full_ids[:len(prompt_ids)] != prompt_ids:
                raise ValueError("the chat template does not render the prompt as a prefix of prompt+completion")
            rows.append(full_ids)
            prompt_lens.append(len(prompt_ids))
        width = max(len(r) for r in rows)
        input_ids_BS = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        completion_mask_BS = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, plen) in enumerate(zip(rows, prompt_lens)):
            input_ids_BS[i, :len(row)] = torch.tensor(row)
            completion_mask_BS[i, plen:len(row)] = True
        attention_mask_BS = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
        logits_BSV = model(input_ids=input_ids_BS.to(model.device),
                           attention_mask=attention_mask_BS.to(model.device), **_no_router_logits(model)).logits.float()
        logprobs_BSV = torch.log_softmax(logits_BSV[:, :-1], dim=-1)
        token_logprobs_BS = logprobs_BSV.gather(-1, input_ids_BS[:, 1:, None].to(model.device)).squeeze(-1)
        scores += (token_logprobs_BS * completion_mask_BS[:, 1:].to(model.device)).sum(-1).tolist()
    return scores
