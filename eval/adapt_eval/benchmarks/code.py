"""What HumanEval and MBPP share: from a model's answer to a program, the program run in the sandbox, pass@k.

A code task's prompt and test harness differ per benchmark (humaneval.py, mbpp.py); everything else is here: the
answer prefix that opens a ```python fence for the model, reading the code out of a chat answer, dropping the
script lines a chat answer adds, running the n programs of a problem in `adapt_eval.sandbox`, the unbiased pass@k,
and the lm-eval task config both build on.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from adapt_eval.benchmarks import lmeval_metrics
from adapt_eval.sandbox import run_programs

# open-instruct's start of the assistant turn for code tasks: the model continues inside a python fence
ANSWER_PREFIX = "Here is the completed function:\n\n\n```python\n"
FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k), as a product (no huge binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score_programs(programs: list[str], k: Iterable[int] = (1, 10), timeout_s: float = 10,
                   memory_mb: int = 1024) -> dict[str, float]:
    """Runs the n programs of one problem in the sandbox; pass@k for every k <= n."""
    results = run_programs(programs, timeout_s=timeout_s, memory_mb=memory_mb)
    n, c = len(results), sum(r.passed for r in results)
    return {f"pass@{kk}": pass_at_k(n, c, kk) for kk in k if kk <= n}


# ---- from a completion to a program ---------------------------------------------------------------------------

def defines(code: str, name: str | None) -> bool:
    return bool(name) and re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(completion: str, entry_point: str | None = None, prompt: str = "") -> str:
    """The code of a completion that may be a chat answer.

    Without a fence: the completion itself. With one: the text before it if that is code (the answer prefix opened
    the fence, so the model's code comes first and the fence closes it), else the fenced python block that defines
    `entry_point`, else the first python block. Code before the fence must parse after `prompt` and be indented (a
    function body) or define the entry point: a line of chat prose never is, even where it happens to parse.
    """
    if "```" not in completion:
        return completion
    head = completion[:completion.index("```")]
    first_line = next((line for line in head.splitlines() if line.strip()), "")
    if first_line and parses(prompt + head) and (first_line[0] in " \t" or defines(head, entry_point)):
        return head
    blocks = [code for lang, code in FENCE.findall(completion) if lang.lower() in ("", "python", "py", "python3")]
    defining = [code for code in blocks if defines(code, entry_point)]
    return (defining or blocks or [head])[0]


def _is_script(node: ast.stmt) -> bool:
    """Top-level statements a chat answer adds around its solution: `if __name__ == "__main__":`, its own asserts,
    print()/input() calls. They would run before the tests (and fail them, wait for input, or exit)."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name):
        return node.value.func.id in ("print", "input")
    if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.comparators) == 1:
        sides = [node.test.left, node.test.comparators[0]]
        names = {s.id for s in sides if isinstance(s, ast.Name)}
        values = {s.value for s in sides if isinstance(s, ast.Constant)}
        return names == {"__name__"} and values == {"__main__"}
    return False


def strip_scripts(source: str) -> str:
    """`source` without its top-level script statements (see `_is_script`); unchanged if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    lines = source.split("\n")
    kept = {i for node in tree.body if not _is_script(node) for i in range(node.lineno - 1, node.end_lineno)}
    dropped = {i for node in tree.body if _is_script(node) for i in range(node.lineno - 1, node.end_lineno)} - kept
    return "\n".join(line for i, line in enumerate(lines) if i not in dropped)


def score_completions(doc: dict[str, Any], completions: list[str], build_program: Callable[[dict, str], str],
                      k: Iterable[int] = (1, 10), timeout_s: float = 10, memory_mb: int = 1024) -> dict[str, float]:
    """pass@k of one problem's completions, each turned into a program by the benchmark's `build_program`."""
    return score_programs([build_program(doc, c) for c in completions], k, timeout_s, memory_mb)


# ---- the lm-eval task -----------------------------------------------------------------------------------------

def keep_all_samples(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """The filter: every one of the n responses per problem (lm-eval's default keeps the first only)."""
    return resps


def responses(results: list) -> list[str]:
    """lm-eval hands process_results [[sample_1, ..., sample_n]] (one request per problem, n repeats)."""
    return list(results[0]) if results and isinstance(results[0], (list, tuple)) else list(results)


def process_results(doc: dict, results: list, *, k: list[int], timeout_s: float, memory_mb: int,
                    builder: Callable[[dict, str], str]) -> dict[str, float]:
    return score_programs([builder(doc, c) for c in responses(results)], k, timeout_s, memory_mb)


def sampling_kwargs(settings: dict[str, Any], temperature: float, until: list[str],
                    max_gen_toks: int = 512) -> dict[str, Any]:
    """generation_kwargs: sampled at `temperature` and top-p when > 0, else greedy."""
    kwargs = {"until": until, "max_gen_toks": int(settings.get("max_gen_toks", max_gen_toks))}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=float(settings.get("top_p", 0.95)))
    else:
        kwargs.update(do_sample=False, temperature=0.0)
    return kwargs


def code_task(name: str, n: int, ks: list[int], settings: dict[str, Any], builder: Callable[[dict, str], str],
              **fields) -> dict[str, Any]:
    """The parts of a code-execution task config that HumanEval and MBPP share."""
    ks = [kk for kk in ks if kk <= n]
    scorer = functools.partial(process_results, k=ks, timeout_s=float(settings.get("timeout_s", 10)),
                               memory_mb=int(settings.get("memory_mb", 1024)), builder=builder)
    return {
        "task": name, "output_type": "generate_until", "test_split": "test", "num_fewshot": 0, "repeats": n,
        "target_delimiter": "", "unsafe_code": True, "process_results": scorer,
        # named "none" like lm-eval's default filter, so results read "pass@1,none" as every other task's do
        "filter_list": [{"name": "none", "filter": [{"function": "custom", "filter_fn": keep_all_samples}]}],
        "metric_list": [{"metric": f"pass@{kk}", "aggregation": "mean", "higher_is_better": True} for kk in ks],
        "metadata": {"version": 1.0}, **fields,
    }


def summarize(results: dict[str, dict]) -> dict[str, dict]:
    """pass@k for each k of the task, with lm-eval's standard errors."""
    return lmeval_metrics(results)

