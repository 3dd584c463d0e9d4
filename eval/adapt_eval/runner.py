"""The models lm-eval talks to: a real one (transformers, or vLLM on a GPU), journaled so an interrupted evaluation
continues where it stopped, and a replay model that answers with stored completions so `adapt eval score` re-scores
predictions through exactly the same task code.

Design note: lm-eval's own `use_cache` keeps results only for greedy requests and writes after each whole call, so it
neither resumes a half-finished task nor keeps HumanEval's sampled completions. `JournaledLM` sends requests to the
real model in chunks and appends each chunk's answers to a JSONL journal keyed by the request (method, task, item,
arguments) and its repeat number; a rerun answers journaled requests from the file and sends only the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from tqdm import tqdm


def request_key(method: str, request) -> str:
    payload = json.dumps([method, request.task_name, request.doc_id, request.args], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class _Forwarding(LM):
    """Passes the chat-template hooks lm-eval calls on a model through to the wrapped one."""

    def __init__(self, inner: LM | None):
        super().__init__()
        self.inner = inner

    @property
    def tokenizer_name(self) -> str:
        return self.inner.tokenizer_name if self.inner is not None else "replay"

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        return self.inner.apply_chat_template(chat_history, add_generation_prompt)

    def chat_template(self, chat_template=False):
        return self.inner.chat_template(chat_template) if self.inner is not None else ""

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("no benchmark of the suite scores rolling log-likelihoods")


class JournaledLM(_Forwarding):
    def __init__(self, inner: LM, journal: Path, chunk: int = 64):
        super().__init__(inner)
        self.journal, self.chunk = Path(journal), chunk
        self.done: dict[tuple[str, int], Any] = {}
        if self.journal.is_file():
            for line in self.journal.read_text(encoding="utf-8").splitlines():
                if line.strip():  # a torn last line (killed mid-write) is just not done yet
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    self.done[(entry["key"], entry["repeat"])] = entry["response"]

    def _run(self, method: str, requests) -> list:
        seen: Counter = Counter()
        keys = []
        for request in requests:
            key = request_key(method, request)
            keys.append((key, seen[key]))
            seen[key] += 1
        todo = [i for i, k in enumerate(keys) if k not in self.done]
        self.resumed = len(requests) - len(todo)
        bar = tqdm(total=len(requests), initial=self.resumed, desc=f"{method} ({self.resumed} from journal)")
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), self.chunk):
                part = todo[start:start + self.chunk]
                answers = getattr(self.inner, method)([requests[i] for i in part], disable_tqdm=True)
                for i, answer in zip(part, answers):
                    self.done[keys[i]] = answer
                    f.write(json.dumps({"key": keys[i][0], "repeat": keys[i][1], "response": answer}) + "\n")
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(part))
        bar.close()
        return [self.done[k] for k in keys]

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._run("generate_until", requests)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [tuple(x) for x in self._run("loglikelihood", requests)]


class ReplayLM(_Forwarding):
    """Answers with stored completions: {lm-eval task name: {doc_id: [completion, ...]}}, one per repeat, in order.
    A request beyond the stored completions is an error, never a repeat of the last one (that would turn one
    completion into pass@10 == pass@1); `adapt_eval.rescore` checks the counts before lm-eval runs.

    Multiple-choice (log-likelihood) requests are answered from the stored choice: the stored text scores 0, every
    other continuation -inf, so the stored answer is the model's pick.
    """

    def __init__(self, completions: dict[str, dict[int, list[str]]]):
        super().__init__(None)
        self.completions = completions
        self.used: Counter = Counter()

    def _next(self, request) -> str:
        key = (request.task_name, request.doc_id)
        stored = self.completions.get(request.task_name, {}).get(request.doc_id) or []
        if self.used[key] >= len(stored):
            raise ValueError(f"{request.task_name} item {request.doc_id}: completion {self.used[key] + 1} asked for, "
                             f"{len(stored)} stored")
        self.used[key] += 1
        return stored[self.used[key] - 1]

    def generate_until(self, requests, disable_tqdm: bool = False):
        return [self._next(r) for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        picks: dict = defaultdict(lambda: None)
        out = []
        for request in requests:
            key = (request.task_name, request.doc_id)
            if picks[key] is None:
                picks[key] = self.completions[request.task_name][request.doc_id][0].strip()
            out.append((0.0 if request.args[1].strip() == picks[key] else float("-inf"), False))
        return out

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in chat_history)


def build_model(model_path: str, batch_size: int, device: str | None, max_length: int | None) -> LM:
    """vLLM when it is installed and a GPU is present (same prompts, same greedy settings), else transformers."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        try:
            from lm_eval.models.vllm_causallms import VLLM

            return VLLM(pretrained=model_path, batch_size="auto", max_length=max_length)
        except ImportError:
            pass
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from adapt.model.loading import load_run_model  # torch: `adapt eval score` replays without a model

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_run_model(model_path, "auto").to(device).eval()  # an adapter folder merged, its chain followed
    text_config = model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False):  # MoE aux loss on every forward: not at eval
        text_config.output_router_logits = False
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, max_length=max_length)
