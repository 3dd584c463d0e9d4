"""A judge model for the benchmarks scored by another model (AlpacaEval's pairwise preference, XSTest's three-way
refusal classification), configured by the suite's `judge:` setting:

    {endpoint: https://api.openai.com/v1, model: gpt-4-0613, api_key_env: OPENAI_API_KEY}
        any OpenAI-compatible chat-completions server (OpenAI, vLLM, TGI, ...); optional `max_retries` (6),
        `backoff_s` (2.0, doubled per retry), `timeout_s` (120). Without `api_key_env` no key is sent (local servers).
    {model_path: /path/or/hub-id}
        a local transformers causal LM used through its chat template with greedy decoding (`device`: default cuda
        when available, else cpu).

Both are greedy (temperature 0) so that a rescore asks the same question and gets the same answer where the
server is deterministic. Errors that retrying cannot fix (a missing or rejected key, a wrong endpoint or model name)
raise `JudgeError` at once with one line naming the setting to change; rate limits, server errors and dropped
connections are retried with exponential backoff.
"""

from __future__ import annotations

import os
import time
from typing import Any

import requests

RETRY_STATUS = {429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """A judge that cannot answer; the message names the `judge.*` setting to fix."""


class Judge:
    def __init__(self, settings: dict[str, Any]):
        self.settings = dict(settings)
        self.endpoint, self.model_path = settings.get("endpoint"), settings.get("model_path")
        if bool(self.endpoint) == bool(self.model_path):
            raise JudgeError(f"judge: give either `endpoint` (+ `model`) or `model_path`, not {sorted(settings)}")
        self.headers = {"Content-Type": "application/json"}
        if self.endpoint:
            if not settings.get("model"):
                raise JudgeError(f"judge.model: missing; name the model {self.endpoint} should run")
            key_env = settings.get("api_key_env")
            if key_env:
                # Checked here, before any completion is generated or request sent, not on the first judgement.
                if not os.environ.get(key_env):
                    raise JudgeError(f"judge.api_key_env: environment variable {key_env} is not set (the API key "
                                     f"for {self.endpoint})")
                self.headers["Authorization"] = f"Bearer {os.environ[key_env]}"
        self._local = None  # (tokenizer, model, device), loaded on the first judgement

    def complete(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """The judge's greedy reply to a chat."""
        if self.endpoint:
            return self._complete_http(messages, max_tokens)
        return self._complete_local(messages, max_tokens)

    def _complete_http(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        url = self.endpoint.rstrip("/") + "/chat/completions"
        payload = {"model": self.settings["model"], "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        retries, backoff = int(self.settings.get("max_retries", 6)), float(self.settings.get("backoff_s", 2.0))
        for attempt in range(retries + 1):
            try:
                response = requests.post(url, json=payload, headers=self.headers,
                                         timeout=float(self.settings.get("timeout_s", 120)))
            except (requests.ConnectionError, requests.Timeout) as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return _reply_text(response, url)
                _raise_unless_retryable(response, url, self.settings)
                problem = f"HTTP {response.status_code}"
            if attempt < retries:
                time.sleep(backoff * 2 ** attempt)
        raise JudgeError(f"judge.endpoint: {url} still failing after {retries + 1} attempts ({problem})")

    def _complete_local(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        import torch

        if self._local is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = self.settings.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
            tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype="auto").to(device).eval()
            self._local = (tokenizer, model, device)
        tokenizer, model, device = self._local
        # The template's text, tokenised without extra special tokens: the template already writes BOS if any.
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _reply_text(response: requests.Response, url: str) -> str:
    try:
        return response.json()["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeError(f"judge.endpoint: {url} did not answer in the chat-completions format: "
                         f"{response.text[:200]!r}") from None


def _raise_unless_retryable(response: requests.Response, url: str, settings: dict[str, Any]) -> None:
    code, body = response.status_code, response.text[:200].replace("\n", " ")
    if code in (401, 403):
        key = settings.get("api_key_env")
        raise JudgeError(f"judge.api_key_env: {url} refused the key ({'from ' + key if key else 'none sent'}): "
                         f"HTTP {code} {body}")
    if code == 404:
        raise JudgeError(f"judge.endpoint / judge.model: {url} answered 404 for model {settings.get('model')!r} "
                         f"(the endpoint should end in /v1): {body}")
    if code not in RETRY_STATUS:
        raise JudgeError(f"judge: {url} answered HTTP {code}: {body}")


def make_judge(settings: dict[str, Any] | None) -> Judge | None:
    """The configured judge, or None when the suite sets none (`judge: null`)."""
    return Judge(settings) if settings else None
