"""Tokenizers: load one (Hub or folder), or build one of the project's own, and give it its chat template."""

from __future__ import annotations

import logging
from importlib import resources

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from adapt.tasks import get_task
from adapt.tasks.reverse import CHATTY

SPECIAL_TOKENS = ["<|endoftext|>", "<|padding|>"]
log = logging.getLogger(__name__)


def tulu_template(add_bos: bool = False) -> str:
    """The open-instruct `tulu` chat template (OLMoE-Instruct's), with `{% generation %}` marks around assistant
    turns so TRL can restrict the loss to them (`assistant_only_loss`)."""
    template = (resources.files("adapt.data") / "templates" / "tulu.jinja").read_text(encoding="utf-8").strip()
    return ("{{ bos_token }}" if add_bos else "") + template


def build_demo_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the demo task's text. Deterministic: same corpus order, one thread's merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    task = get_task("reverse")
    corpus = ["<|user|>\n", "<|assistant|>\n", "<|system|>\n", CHATTY]
    for item in task.items("train", 2000):
        corpus += [item.prompt, item.answer]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|padding|>", unk_token=None)


BUILTIN_TOKENIZERS = {"demo": build_demo_tokenizer}
_ANNOUNCED: set[str] = set()


def _eos_as_bos(tokenizer: PreTrainedTokenizerBase, ref: str) -> None:
    """open-instruct's rule for `--add_bos` with a tokenizer that has no BOS (OLMoE's): use EOS as BOS. Without it
    the template's `{{ bos_token }}` renders nothing and every example silently starts without a BOS."""
    if tokenizer.eos_token is None:
        raise ValueError(f"model.add_bos: {ref} has neither a BOS nor an EOS token; name one in "
                         f"model.special_tokens (bos_token: ...)")
    tokenizer.bos_token = tokenizer.eos_token
    if ref not in _ANNOUNCED:
        _ANNOUNCED.add(ref)
        log.warning("model.add_bos: %s has no BOS token; using its EOS token %r (id %d) as BOS, as open-instruct "
                    "does", ref, tokenizer.eos_token, tokenizer.eos_token_id)


def load_tokenizer(model_section) -> PreTrainedTokenizerBase:
    """The tokenizer a `model:` recipe section names, with the chat template it asks for."""
    ref = model_section.tokenizer or model_section.name_or_path
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        if name not in BUILTIN_TOKENIZERS:
            raise ValueError(f"model.tokenizer: unknown builtin tokenizer {name!r}; "
                             f"known: {sorted(BUILTIN_TOKENIZERS)}")
        tokenizer = BUILTIN_TOKENIZERS[name]()
    elif ref.endswith(".json"):  # a bare tokenizers file; its special tokens come from `model.special_tokens`
        from pathlib import Path

        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(ref).expanduser()))
    else:
        tokenizer = AutoTokenizer.from_pretrained(ref, revision=model_section.revision,
                                                  trust_remote_code=model_section.trust_remote_code)
    for role, token in model_section.special_tokens.items():
        if role not in ("bos_token", "eos_token", "pad_token", "unk_token"):
            raise ValueError(f"model.special_tokens.{role}: use bos_token, eos_token, pad_token or unk_token")
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"model.special_tokens.{role}: {token!r} is not in the tokenizer's vocabulary")
        setattr(tokenizer, role, token)
    if model_section.add_bos and tokenizer.bos_token is None:
        _eos_as_bos(tokenizer, ref)
    if model_section.chat_template == "tulu":
        tokenizer.chat_template = tulu_template(model_section.add_bos)
    elif not tokenizer.chat_template:
        raise ValueError(f"model.chat_template: `tokenizer` chosen but {ref} has no chat template; use `tulu`")
    if tokenizer.pad_token is None:  # batching needs one; eos is the usual stand-in and is masked out of the loss
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
