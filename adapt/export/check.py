"""An exported GGUF checked against llama.cpp itself (llama-cpp-python loads the file): what transformers computes on
the run's folder, llama.cpp must compute on the file. `adapt export gguf --check`, bench/gguf_export.py and the tests
use it: tokenization id for id, next-token logits at every position, a greedy continuation, and the chat prompt
llama.cpp builds from the file's template against the run's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adapt.export.gguf_file import load_weights

PLAIN = ["Reverse: a b c", "Hello world, this is a test.", " leading space\n\nnewlines\t tab", "   many   spaces  ",
         "Ünïcödé 🚀 我想 ''' I've 123 4567", "<|user|>\nhi<|endoftext|>"]
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse: a b c"},
                {"role": "assistant", "content": "c b a"}, {"role": "user", "content": "Reverse: d e"}]


def open_gguf(path):
    """llama.cpp with a float32 K/V cache: its default f16 cache alone moves logits by ~1e-2 (measured), which would
    hide what the export did."""
    import llama_cpp

    # YaRN's betas: llama-cpp-python passes 32 and 1 over the file's own values unless told -1 (read from the file),
    # as llama.cpp's own tools do
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=2, verbose=False, seed=0,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, yarn_beta_fast=-1.0,
                           yarn_beta_slow=-1.0)


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
    worst, scale, _ = logits_distances(model, tokenizer, llm)
    return worst, scale


def logits_distances(model, tokenizer, llm) -> tuple[float, float, float]:
    """(max |difference|, max |logit|, mean |difference| / mean |logit|) over every position of every text. The
    relative mean is what a rounded file is judged on: the max is set by the few positions where rounding flips a
    token's experts, which a tiny random model has many of and a trained one few."""
    worst, scale, total_difference, total_logit = 0.0, 0.0, 0.0, 0.0
    for text in texts(tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0].float().numpy()
        llm.reset()
        llm.eval(ids)
        difference = np.abs(ours - np.array(llm.scores[:len(ids)]))
        worst, scale = max(worst, float(difference.max())), max(scale, float(np.abs(ours).max()))
        total_difference, total_logit = total_difference + float(difference.sum()), total_logit + float(
            np.abs(ours).sum())
    return worst, scale, total_difference / max(total_logit, 1e-30)


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


# What `--check` accepts per type: mean |logit difference| / mean |logit|. Measured (export DESIGN.md) on
# the demo's SFT model (hidden 96: K-quants fall back to Q5_0/Q5_1/Q8_0 there) and on a 256-wide tiny OLMoE whose
# tensors are real K-quants: q8_0 0.0074 / 0.017, q6_k 0.0074 / 0.050, q5_k_m 0.029 / 0.087, q4_k_m 0.033 / 0.16;
# f16 2.2e-4, bf16 see tests/test_export.py. About 1.5-3x the worst measured value.
RELATIVE_TOLERANCE = {"f16": 0.01, "bf16": 0.05, "q8_0": 0.05, "q6_k": 0.1, "q5_k_m": 0.15, "q4_k_m": 0.25}
F32_TOLERANCE = 1e-3  # max |difference| of an f32 file (float rounding; measured 1e-5 on the demo model)
GREEDY_TOKENS = 16


@dataclass
class CheckResult:
    type: str
    tokenization_differences: list[str]
    max_logit_difference: float
    max_logit: float
    relative_difference: float  # mean |difference| / mean |logit|
    greedy_agreement: int  # how many of the 16 greedy tokens agree before the first that differs
    chat_template_equal: bool | None  # None: the run has no chat template

    @property
    def greedy_equal(self) -> bool:
        return self.greedy_agreement == GREEDY_TOKENS

    def passed(self) -> bool:
        """Tokens and the chat prompt must be identical in every type; an f32 file must also give the logits (to
        float tolerance) and the greedy continuation; a rounded type its measured tolerance (RELATIVE_TOLERANCE).
        The greedy agreement of a rounded file is reported, not judged (one flipped token changes the rest)."""
        same = not self.tokenization_differences and self.chat_template_equal is not False
        if self.type == "f32":
            return same and self.greedy_equal and self.max_logit_difference < F32_TOLERANCE
        return same and self.relative_difference <= RELATIVE_TOLERANCE[self.type]

    def lines(self) -> list[str]:
        tokens = ("equal on every text" if not self.tokenization_differences
                  else "DIFFERS: " + "; ".join(self.tokenization_differences[:2]))
        chat = {True: "the same prompt", False: "a DIFFERENT prompt", None: "none (the run has no chat template)"}[
            self.chat_template_equal]
        limit = (f"max below {F32_TOLERANCE:g}" if self.type == "f32"
                 else f"tolerance for {self.type}: {RELATIVE_TOLERANCE[self.type]:g}")
        return [f"tokenization: {tokens}",
                f"logits: max |transformers - llama.cpp| {self.max_logit_difference:.2e} (logits up to "
                f"{self.max_logit:.1f}); mean |difference| / mean |logit| {self.relative_difference:.2e} ({limit})",
                f"greedy {GREEDY_TOKENS} tokens: {self.greedy_agreement} agree before the first difference",
                f"chat template: {chat}"]


def check_gguf(run_dir, gguf_path, type_: str, model=None) -> CheckResult:
    """Compare the file (of export type `type_`) with the run folder's model (a LoRA run merged), in float32."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = (model or load_weights(run_dir)).float().eval()
    llm = open_gguf(gguf_path)
    try:
        templated = tokenizer.chat_template is not None
        prompt = (tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) if templated
                  else PLAIN[0])
        worst, scale, relative = logits_distances(model, tokenizer, llm)
        ours, theirs = greedy(model, tokenizer, llm, prompt, GREEDY_TOKENS)
        agreement = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        return CheckResult(type_, tokenization_differences(tokenizer, llm), worst, scale, relative, agreement,
                           chat_prompt(llm, CONVERSATION) == prompt if templated else None)
    finally:
        llm.close()
