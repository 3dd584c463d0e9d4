import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tokenized-mixture cache of every test run (subprocesses included) goes to a fresh folder, not ~/.cache.
os.environ["ADAPT_CACHE"] = tempfile.mkdtemp(prefix="adapt-test-cache-")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

torch.set_num_threads(2)


def _sandbox_opt_in() -> None:
    """Where bubblewrap cannot run (a user's machine without it), the sandbox tests run the Python-level layers
    only, as `adapt eval --unsafe-sandbox` would; the escape test skips there."""
    from adapt_eval import sandbox

    if not sandbox.isolation_available():
        os.environ.setdefault(sandbox.UNSAFE_ENV, "1")


_sandbox_opt_in()


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (it holds the real data and tokenizer; only developers and CI have it)")
    return SHARED


@pytest.fixture(scope="session")
def demo_tokenizer():
    from adapt.config.sections import ModelSection
    from adapt.data.tokenizer import load_tokenizer

    return load_tokenizer(ModelSection(tokenizer="builtin:demo"))


def tiny_olmoe(seed: int = 0, **overrides):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    fields = dict(vocab_size=300, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_experts=4, num_experts_per_tok=2, pad_token_id=1, eos_token_id=0, bos_token_id=0)
    fields.update(overrides)
    torch.manual_seed(seed)
    return OlmoeForCausalLM(OlmoeConfig(**fields))


# `python -c` program: the adapt command line with every constructor of expensive work made to refuse. A recipe
# error must come before any of them (what a user waits for is measured in bench/fail_fast.py, not asserted).
GUARDED_CLI = """
import sys, datasets, transformers
def refuse(*args, **kwargs):
    raise SystemExit("constructed before the recipe error")
transformers.PreTrainedModel.__init__ = refuse
transformers.PreTrainedTokenizerBase.__init__ = refuse
transformers.Trainer.__init__ = refuse
datasets.Dataset.__init__ = refuse
from adapt.cli import main
main(sys.argv[1:])
"""


def run_guarded_cli(*args: str, **kwargs):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", GUARDED_CLI, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, **kwargs)


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


TINY_SFT = """
stage: sft
model:
  config: {{hidden_size: 32, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 4,
           num_experts: 4, num_experts_per_tok: 2, max_position_embeddings: 64}}
  tokenizer: builtin:demo
  dtype: float32
data:
  sources: [{{task: reverse, rows: {rows}}}]
router:
  load_balancing_weight: {lb}
  z_loss_weight: {z}
training:
  output_dir: {out}
  max_steps: {steps}
  per_device_train_batch_size: 8
  learning_rate: 1.0e-2
  max_length: 48
  logging_steps: 1
  save_strategy: "no"
  report_to: []
  bf16: false
  activation_checkpointing: false
  disable_tqdm: true
  seed: 0
"""

TINY_DPO = """
stage: dpo
model:
  name_or_path: {model}
  dtype: float32
data:
  sources: [{{task: reverse, rows: {rows}}}]
router:
  load_balancing_weight: {lb}
  z_loss_weight: {z}
training:
  output_dir: {out}
  max_steps: {steps}
  per_device_train_batch_size: 4
  learning_rate: 1.0e-2
  max_length: 48
  logging_steps: 1
  save_strategy: "no"
  report_to: []
  bf16: false
  activation_checkpointing: false
  disable_tqdm: true
  seed: 0
"""


def mixture_rows(section, stage: str):
    """A data section's mixture as conversational rows, before tokenization: `train`, `eval` (the held-out split)
    and `sources` (each source's summary), read by the same functions `adapt.data.prepare` uses."""
    from types import SimpleNamespace

    from adapt.data.sources import read_mixture, split_eval
    from adapt.data.tokenize import SOURCE_COLUMN

    rows, sources = read_mixture(section, stage)
    train, held_out = split_eval(rows.remove_columns(SOURCE_COLUMN), section.eval_rows, section.seed)
    return SimpleNamespace(train=train, eval=held_out, sources=[s.as_dict() for s in sources])
