"""An exported GGUF checked against llama.cpp itself (llama-cpp-python loads the file): what transformers computes on
the run's folder, llama.cpp must compute on the file. `adapt export gguf --check`, bench/gguf_export.py and the tests
use it: tokenization id for id, next-token logits at every position, a greedy continuation, and the chat prompt
llama.cpp builds from the file's template against the run's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PLAIN = ["Reverse: a b c", "Hello world, this is a test.", " leading space\n\nnewlines\t tab", "   many   spaces  ",
         "Ünïcödé 🚀 我想 ''' I've 123 4567", "<|user|>\nhi<|endoftext|>"]
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse: a b c"},
                {"role": "assistant", "content": "c b a"}, {"role": "user", "content": "Reverse: d e"}]


def open_gguf(path):
    """llama.cpp with a float32 K/V cache: its default f16 cache alone moves logits by ~1e-2 (measured), which would
    hide what the export did."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=2, verbose=False, seed=0,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def chat_prompt(llm, messages) -> str:
    """The prompt llama.cpp's chat path builds from the file's own `tokenizer.chat_template` (create_chat_completion
    uses the same formatter)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                                    eos_token=llm._model.token_get_text(llm.token_eos()),
                                    bos_token=llm._model.token_get_text(llm.token_bos()), add_generation_prompt=True)
    return formatter(messages=messages).prompt


def texts(tokenizer) -> list[str]:
    if tokenizer.chat_template is None:
        return PLAIN
    return PLAIN + [tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)]


def tokenization_differences(tokenizer, llm) -> list[str]:
    wrong = []
    for text in texts(tokenizer):
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        if ours != theirs:
            wrong.append(f"{text!r}: {ours[:10]} != {theirs[:10]}")
    return wrong


def logits_difference(model, tokenizer, llm) -> tuple[float, float]:
    """(max |transformers - llama.cpp| over every position of every text, max |transformers logit|)."""
    worst, scale = 0.0, 0.0
    for text in texts(tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0].float().numpy()
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[:len(ids)])
        worst, scale = max(worst, float(np.abs(ours - theirs).max())), max(scale, float(np.abs(ours).max()))
    return worst, scale


def greedy(model, tokenizer, llm, prompt: str, n: int = 16) -> tuple[list[int], list[int]]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ours = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              eos_token_id=None, pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
    theirs = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        theirs.append(token)
        if len(theirs) == n:
            break
    return ours, theirs


@dataclass
class CheckResult:
    tokenization_differences: list[str]
    max_logit_difference: float
    max_logit: float
    greedy_equal: bool
    chat_template_equal: bool | None  # None: the run has no chat template

    def passed(self, exact: bool) -> bool:
        """Tokens and the chat prompt must be identical in every type; an f32 file must also give the logits (to
        float tolerance) and the greedy continuation. Rounded types are reported, not judged."""
        same = not self.tokenization_differences and self.chat_template_equal is not False
        return same and (not exact or (self.greedy_equal and self.max_logit_difference < 1e-3))

    def lines(self) -> list[str]:
        tokens = ("equal on every text" if not self.tokenization_differences
                  else "DIFFERS: " + "; ".join(self.tokenization_differences[:2]))
        chat = {True: "the same prompt", False: "a DIFFERENT prompt", None: "none (the run has no chat template)"}[
            self.chat_template_equal]
        return [f"tokenization: {tokens}",
                f"logits: max |transformers - llama.cpp| {self.max_logit_difference:.2e} (logits up to "
                f"{self.max_logit:.1f})",
                f"greedy 16 tokens: {'identical' if self.greedy_equal else 'DIFFER'}",
                f"chat template: {chat}"]


def check_gguf(run_dir, gguf_path, model=None) -> CheckResult:
    """Compare the file with the run folder's model (a LoRA run merged), in float32."""
    from transformers import AutoTokenizer

    from adapt.export.gguf_file import load_weights

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = (model or load_weights(run_dir)).float().eval()
    llm = open_gguf(gguf_path)
    try:
        templated = tokenizer.chat_template is not None
        prompt = (tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) if templated
                  else PLAIN[0])
        worst, scale = logits_difference(model, tokenizer, llm)
        ours, theirs = greedy(model, tokenizer, llm, prompt)
        return CheckResult(tokenization_differences(tokenizer, llm), worst, scale, ours == theirs,
                           chat_prompt(llm, CONVERSATION) == prompt if templated else None)
    finally:
        llm.close()
