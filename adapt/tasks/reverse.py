"""`reverse`: reverse a short sequence of letters. The demo's task, generated here, never downloaded.

Small enough that a 2-layer MoE learns it in a minute on a CPU, structured enough that held-out items test
generalisation (train and test sequences are disjoint by a hash split). It also carries a preference that SFT does
not teach: SFT completions come in two styles (terse `c b a` or chatty `Sure! Reversed: c b a`), and the preference
pairs always choose the terse, correct answer, so only DPO can learn which style is preferred.
"""

from __future__ import annotations

import random
import re
import zlib

from adapt.tasks.task import Item, PreferencePair, Task

LETTERS = "abcdefghijkl"
CHATTY = "Sure! Reversed: {}"


class ReverseTask(Task):
    name = "reverse"

    def __init__(self, min_len: int = 3, max_len: int = 5, test_share: int = 10):
        self.min_len, self.max_len, self.test_share = min_len, max_len, test_share

    def _split_of(self, seq: str) -> str:
        return "test" if zlib.crc32(seq.encode()) % self.test_share == 0 else "train"

    def items(self, split: str, n: int | None = None, seed: int = 0) -> list[Item]:
        if split not in self.splits:
            raise ValueError(f"task reverse has splits {self.splits}, not {split!r}")
        n = 1000 if n is None else n
        rng = random.Random(f"reverse-{split}-{seed}")
        out, seen = [], set()
        while len(out) < n:
            seq = " ".join(rng.choice(LETTERS) for _ in range(rng.randint(self.min_len, self.max_len)))
            if seq in seen or self._split_of(seq) != split:
                continue
            seen.add(seq)
            out.append(Item(id=f"reverse-{split}-{len(out)}", prompt=f"Reverse: {seq}",
                            answer=" ".join(reversed(seq.split()))))
        return out

    def score(self, item: Item, completion: str) -> float:
        answer = completion.split(":")[-1]  # both styles end with the letters
        return float(" ".join(re.findall(r"[a-z]", answer)) == item.answer)

    def sft_completion(self, item: Item, rng: random.Random) -> str:
        return item.answer if rng.random() < 0.5 else CHATTY.format(item.answer)

    def preference_pair(self, item: Item, rng: random.Random) -> PreferencePair:
        if rng.random() < 0.5:
            return PreferencePair(item, item.answer, CHATTY.format(item.answer), kind="style")
        letters = item.answer.split()
        wrong = list(reversed(letters))  # the sequence as given: the classic mistake
        if wrong == letters:  # a palindrome: swap two letters instead
            i, j = rng.sample(range(len(letters)), 2)
            wrong[i], wrong[j] = wrong[j], wrong[i]
        if wrong == letters:
            wrong = [LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in letters]
        return PreferencePair(item, item.answer, " ".join(wrong), kind="correctness")
