"""The one `Task` shape shared by training data and evaluation.

A task owns its items (a prompt and a reference answer), how a completion is scored against an item, and how an
item becomes a training row: an SFT prompt/completion pair or a DPO preference pair. Training reads a task through
`data.sources: [{task: NAME}]`; evaluation scores the same task's held-out split, so the two can never disagree on
format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str  # the user turn
    answer: str  # the reference answer, as the task's scorer expects it


@dataclass(frozen=True)
class PreferencePair:
    item: Item
    chosen: str
    rejected: str
    kind: str  # why chosen beats rejected (e.g. `correct-vs-wrong`, `style`), for per-kind breakdowns


class Task:
    """Base class. Subclasses set `name` and implement `items` and `score`; the rest has sensible defaults."""

    name: str = "task"
    splits: tuple[str, ...] = ("train", "test")

    def items(self, split: str, n: int | None = None, seed: int = 0) -> list[Item]:
        raise NotImplementedError

    def score(self, item: Item, completion: str) -> float:
        """1.0 for a correct completion, 0.0 otherwise (or a partial credit in [0, 1])."""
        raise NotImplementedError

    # Training rows -------------------------------------------------------------------------------------------
    def sft_completion(self, item: Item, rng: random.Random) -> str:
        return item.answer

    def preference_pair(self, item: Item, rng: random.Random) -> PreferencePair:
        raise NotImplementedError(f"task {self.name!r} has no preference pairs")

    def sft_rows(self, split: str, n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """Conversations (`messages`), the toolkit's SFT row shape; the loss falls on the assistant turn."""
        rng = random.Random(f"{self.name}-sft-{split}-{seed}")
        return [{"messages": [{"role": "user", "content": it.prompt},
                              {"role": "assistant", "content": self.sft_completion(it, rng)}]}
                for it in self.items(split, n, seed)]

    def preference_pairs(self, split: str, n: int | None = None, seed: int = 0) -> list[PreferencePair]:
        rng = random.Random(f"{self.name}-pref-{split}-{seed}")
        return [self.preference_pair(it, rng) for it in self.items(split, n, seed)]

    def preference_rows(self, split: str, n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """Conversational prompt/chosen/rejected rows, TRL's DPO format."""
        return [{"prompt": [{"role": "user", "content": p.item.prompt}],
                 "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]}
                for p in self.preference_pairs(split, n, seed)]
