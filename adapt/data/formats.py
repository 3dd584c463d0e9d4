"""Row converters: the formats of the OLMoE mixture's sources (and the common ones around them) into one shape.

SFT rows become `{"messages": [{"role", "content"}, ...]}`; preference rows become
`{"prompt": [turns], "chosen": [assistant turn], "rejected": [assistant turn]}` (TRL's conversational formats).
A converter raises `RowError` with the reason when a row cannot be used; the loader counts or fails on it as the
recipe's `data.on_bad_row` says, so nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from adapt.config.stages import STAGES

Row = dict[str, Any]
Messages = list[dict[str, str]]


class RowError(ValueError):
    """Why one row cannot be used; `reason` is a short key for the summary's drop counts."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
              "Human": "user", "Assistant": "assistant", "User": "user"}


def _field(row: Row, name: str) -> Any:
    if name not in row or row[name] is None:
        raise RowError("missing field", f"`{name}`")
    return row[name]


def check_conversation(messages: Messages) -> Messages:
    """Roles are system?, then user/assistant alternating, ending on a non-empty assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise RowError("empty conversation")
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    if any(r not in ("system", "user", "assistant") for r in roles):
        raise RowError("unknown role", str(roles))
    body = roles[1:] if roles[0] == "system" else roles
    if not body or body[0] != "user" or any(a == b for a, b in zip(body, body[1:])) or "system" in body:
        raise RowError("turns out of order", " -> ".join(roles))
    if body[-1] != "assistant":
        raise RowError("no final assistant turn")
    for m in messages:
        if not isinstance(m.get("content"), str):
            raise RowError("non-text content", m.get("role", "?"))
        if m["role"] == "assistant" and not m["content"].strip():
            raise RowError("empty assistant turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# ------------------------------------------------------------------------------------------------------------ SFT

def from_messages(row: Row) -> Row:  # Tulu SFT mixtures, No Robots
    return {"messages": check_conversation(_field(row, "messages"))}


def from_conversations(row: Row) -> Row:  # Daring Anteater, ShareGPT: [{"from": "human", "value": ...}]
    turns = []
    system = row.get("system")
    if system:
        turns.append({"role": "system", "content": system})
    for turn in _field(row, "conversations"):
        role = ROLE_NAMES.get(turn.get("from") or turn.get("role"))
        if role is None:
            raise RowError("unknown role", str(turn.get("from")))
        turns.append({"role": role, "content": turn.get("value", turn.get("content"))})
    return {"messages": check_conversation(turns)}


def _pair(user: Any, assistant: Any) -> Row:
    return {"messages": check_conversation([{"role": "user", "content": user},
                                            {"role": "assistant", "content": assistant}])}


def from_query_answer(row: Row) -> Row:  # CodeFeedback-Filtered-Instruction
    return _pair(_field(row, "query"), _field(row, "answer"))


def from_query_response(row: Row) -> Row:  # MetaMathQA
    return _pair(_field(row, "query"), _field(row, "response"))


def from_alpaca(row: Row) -> Row:  # instruction / input / output (Alpaca, CodeAlpaca)
    instruction, extra = _field(row, "instruction"), row.get("input") or ""
    return _pair(f"{instruction}\n\n{extra}" if extra.strip() else instruction, _field(row, "output"))


def from_prompt_completion(row: Row) -> Row:
    prompt, completion = _field(row, "prompt"), _field(row, "completion")
    prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    completion = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    return {"messages": check_conversation(prompt + completion)}


# ---------------------------------------------------------------------------------------------------- preferences

def _as_reply(value: Any, prompt: Messages) -> Messages:
    """A chosen/rejected value as one assistant turn: a string, or a message list that may repeat the prompt."""
    if isinstance(value, str):
        turns = [{"role": "assistant", "content": value}]
    elif isinstance(value, list):
        turns = value[len(prompt):] if value[:len(prompt)] == prompt else value
    else:
        raise RowError("bad completion type", type(value).__name__)
    if len(turns) != 1 or turns[0].get("role") != "assistant":
        raise RowError("completion is not one assistant turn")
    if not str(turns[0].get("content", "")).strip():
        raise RowError("empty assistant turn")
    return [{"role": "assistant", "content": turns[0]["content"]}]


def from_prompt_chosen_rejected(row: Row) -> Row:  # UltraFeedback binarized, plain preference files
    prompt = _field(row, "prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RowError("empty prompt")
        prompt = [{"role": "user", "content": prompt}]
    chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
    out = {"prompt": prompt, "chosen": _as_reply(chosen, prompt), "rejected": _as_reply(rejected, prompt)}
    check_conversation(out["prompt"] + out["chosen"])
    return out


HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str) -> Messages:
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise RowError("bad transcript", "text before the first `Human:` turn")
    return [{"role": ROLE_NAMES[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def from_hh_rlhf(row: Row) -> Row:  # Anthropic HH-RLHF: two full transcripts sharing every turn but the last
    chosen, rejected = parse_hh_transcript(_field(row, "chosen")), parse_hh_transcript(_field(row, "rejected"))
    if chosen[:-1] != rejected[:-1]:
        raise RowError("transcripts diverge before the last turn")
    prompt = chosen[:-1]
    out = {"prompt": prompt, "chosen": _as_reply(chosen[-1:], []), "rejected": _as_reply(rejected[-1:], [])}
    check_conversation(prompt + out["chosen"])
    return out


SFT_FORMATS: dict[str, Callable[[Row], Row]] = {
    "messages": from_messages, "conversations": from_conversations, "query_answer": from_query_answer,
    "query_response": from_query_response, "alpaca": from_alpaca, "prompt_completion": from_prompt_completion,
}
PREFERENCE_FORMATS: dict[str, Callable[[Row], Row]] = {
    "prompt_chosen_rejected": from_prompt_chosen_rejected, "hh_rlhf": from_hh_rlhf,
}
CONVERTERS = {**SFT_FORMATS, **PREFERENCE_FORMATS}
# Which columns identify a format when a source does not name one (the first of the stage's formats that matches).
SIGNATURES = [
    ("messages", {"messages"}), ("conversations", {"conversations"}), ("query_answer", {"query", "answer"}),
    ("query_response", {"query", "response"}), ("alpaca", {"instruction", "output"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("prompt_chosen_rejected", {"prompt", "chosen", "rejected"}), ("hh_rlhf", {"chosen", "rejected"}),
]


def detect_format(columns: set[str], stage: str) -> str | None:
    formats = STAGES[stage].formats  # adapt/config/stages.py
    for name, needed in SIGNATURES:
        if name in formats and needed <= columns:
            return name
    return None


def converter(fmt: str, stage: str) -> Callable[[Row], Row]:
    formats = STAGES[stage].formats
    if fmt not in formats:
        raise ValueError(f"format {fmt!r} is not a {stage} format; known: {', '.join(sorted(formats))}")
    return CONVERTERS[fmt]
