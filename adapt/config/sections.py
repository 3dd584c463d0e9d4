"""The toolkit's own recipe sections: everything a recipe says that TRL's configs do not.

Each section is a plain dataclass so that the recipe loader can check keys and types against its fields, and so
that the resolved recipe written beside a model is just `dataclasses.asdict` of these.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from adapt.config.benchmarks import BENCHMARKS

# The names a recipe may use, each implemented a layer up: the recipe check refuses any other before anything
# loads, and tests/test_structure.py holds each table equal to its implementation.
SFT_FORMATS = ("messages", "conversations", "query_answer", "query_response", "alpaca", "prompt_completion")
PREFERENCE_FORMATS = ("prompt_chosen_rejected", "hh_rlhf")  # both: adapt/data/formats.py
BUILTIN_TOKENIZERS = ("demo",)  # adapt/data/tokenizer.py
DECONTAMINATION_BENCHMARKS = tuple(BENCHMARKS)  # every benchmark of the table (adapt/config/benchmarks.py)


@dataclass(frozen=True)
class Range:
    """The values a number may take, kept in a field's metadata (`metadata={"help": ..., "range": Range(...)}`): the
    recipe check refuses any other (adapt/config/limits.py) and the recipe reference prints it."""

    low: float
    low_ok: bool  # whether `low` itself is allowed
    high: float = math.inf
    high_ok: bool = False
    fix: str = "give a value in range"  # the error's `Fix:` for a value outside

    def admits(self, value: float) -> bool:
        return (value > self.low or (self.low_ok and value == self.low)) and \
            (value < self.high or (self.high_ok and value == self.high))

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>=' if self.low_ok else '>'} {self.low:g}"
        return f"in {'[' if self.low_ok else '('}{self.low:g}, {self.high:g}{']' if self.high_ok else ')'}"


def field_ranges(cls) -> dict[str, Range]:
    """A dataclass's fields that have a range, by name."""
    return {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}


@dataclass
class ModelSection:
    """Which model and tokenizer a stage starts from."""

    name_or_path: str | None = field(default=None, metadata={
        "help": "A Hub id (`allenai/OLMoE-1B-7B-0924`) or a local folder written by `save_pretrained` (e.g. an SFT "
                "run)."})
    config: dict[str, Any] | None = field(default=None, metadata={
        "help": "Instead of loading weights: build a randomly initialised model from these config fields (tiny "
                "demo/test models)."})
    architecture: str = field(default="olmoe", metadata={
        "help": "The family `config` builds: a transformers `model_type` of adapt/config/families.py (olmoe, "
                "qwen3_moe, qwen2_moe, mixtral, deepseek_v3, glm4_moe, gpt_oss, granitemoe)."})
    revision: str | None = field(default=None, metadata={
        "help": "The Hub revision (branch, tag or commit) of `name_or_path`."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={
        "help": "The dtype the weights load in; `auto`: the checkpoint's own."})
    tokenizer: str | None = field(default=None, metadata={
        "help": "Hub id, folder or tokenizer.json file of the tokenizer; defaults to `name_or_path`. "
                "`builtin:<name>` builds one of the project's own."})
    chat_template: Literal["tulu", "tokenizer"] = field(default="tulu", metadata={
        "help": "`tulu`: the open-instruct template OLMoE-Instruct was trained with; `tokenizer`: keep the "
                "tokenizer's own."})
    add_bos: bool = field(default=False, metadata={
        "help": "Prepend the BOS token to every example (open-instruct's `--add_bos`, used by the OLMoE recipes). A "
                "tokenizer with no `bos_token` (OLMoE's) gets its EOS token as BOS, open-instruct's rule; the saved "
                "tokenizer keeps it, so evaluation prompts start the way training examples did."})
    experts_implementation: Literal["grouped_mm", "eager", "batched_mm", "adapt_fused"] | None = field(
        default=None, metadata={
            "help": "How the experts run: transformers' `grouped_mm` (its default), `eager`, `batched_mm`, or the "
                    "toolkit's `adapt_fused` (adapt/model/fused_experts.py: the same grouped GEMMs with the routing "
                    "around them fused)."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "transformers' attention implementation (`sdpa`, `eager`, `flash_attention_2`, ...); unset: its "
                "default."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run model code the Hub repository ships (transformers' `trust_remote_code`)."})
    special_tokens: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Special tokens to set on the tokenizer, e.g. {pad_token: \"<|padding|>\"}; needed for a bare "
                "tokenizer.json file."})


@dataclass
class DataSource:
    """One input to the training mixture. Exactly one of `path`, `hub` or `task` is set."""

    path: str | None = field(default=None, metadata={
        "help": "A local .jsonl / .json / .parquet / .csv file (.gz allowed for jsonl/json/csv)."})
    hub: str | None = field(default=None, metadata={
        "help": "A Hub dataset name, e.g. allenai/tulu-v3.1-mix-preview-4096-OLMoE."})
    task: str | None = field(default=None, metadata={
        "help": "A built-in generated task (adapt.tasks), e.g. `reverse`."})
    name: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    split: str = field(default="train", metadata={"help": "The dataset split to read."})
    revision: str | None = field(default=None, metadata={"help": "The Hub revision of a `hub` dataset."})
    rows: int | None = field(default=None, metadata={
        "help": "Take at most this many rows (after a seeded shuffle when `shuffle`).",
        "range": Range(0, False, fix="drop it to take every row")})
    shuffle: bool = field(default=False, metadata={
        "help": "Shuffle the rows (seeded by `data.seed`) before `rows` takes its share."})
    format: str | None = field(default=None, metadata={
        "help": "Row format (adapt.data.formats), detected from the columns when not given: "
                f"{', '.join(SFT_FORMATS)}; {', '.join(PREFERENCE_FORMATS)}."})


@dataclass
class DataSection:
    """The training data of a stage."""

    sources: list[DataSource] = field(default_factory=list, metadata={
        "help": "The inputs of the mixture, each a mapping of the `data.sources[]` keys below."})
    eval_rows: int = field(default=0, metadata={
        "help": "Rows held out of the mixture for the trainer's evaluation loop (0: none).",
        "range": Range(0, True, fix="use 0 to hold out no rows")})
    seed: int = field(default=0, metadata={"help": "The seed of the shuffles and of the held-out rows' choice."})
    on_bad_row: Literal["fail", "skip"] = field(default="fail", metadata={
        "help": "A row that cannot be used (missing field, empty assistant turn, turns out of order, undecodable "
                "line): `fail` stops with the file and row; `skip` drops it and counts it, by reason, in the data "
                "summary."})
    decontaminate: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Benchmarks whose prompts must not leak into training: name "
                f"({', '.join(DECONTAMINATION_BENCHMARKS)}) -> local file or folder. A row is dropped, and listed "
                "in the data summary with the item it matched, when `decontam_threshold` of an item's word "
                "`decontam_ngram`-grams occur in the row's user turns."})
    decontam_ngram: int = field(default=8, metadata={
        "help": "The word n-gram length `decontaminate` compares.",
        "range": Range(1, True, fix="e.g. threshold 0.5 with 8-grams")})
    decontam_threshold: float = field(default=0.5, metadata={
        "help": "The share of a benchmark item's n-grams a row must contain to be dropped.",
        "range": Range(0, False, 1, True, fix="e.g. threshold 0.5 with 8-grams")})
    over_length: Literal["truncate", "drop"] = field(default="truncate", metadata={
        "help": "Examples longer than `training.max_length` tokens: `truncate` (open-instruct's and TRL's "
                "behaviour; a row left with no assistant token is dropped) or `drop`. Both are counted per source "
                "in the data summary."})
    identical_pairs: Literal["drop", "keep"] = field(default="drop", metadata={
        "help": "Preference pairs whose chosen and rejected answers are the same teach nothing: `drop` (counted) "
                "or `keep`."})
    duplicates: Literal["keep", "drop"] = field(default="keep", metadata={
        "help": "Rows that repeat an earlier row of the same source exactly: counted in the summary either way; "
                "`drop` or `keep`."})
    cache: bool = field(default=True, metadata={
        "help": "Keep the tokenized mixture and reuse it while nothing that changes it changes "
                "(adapt/data/cache.py)."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "Where the cache is kept; default: $ADAPT_CACHE/data, else ~/.cache/adapt/data."})
    strip: bool | None = field(default=None, metadata={
        "help": "Strip leading and trailing whitespace from every message's content before the template renders "
                "it, as open-instruct does. Unset: on with the tulu template (OLMoE-Instruct's training), off with "
                "the tokenizer's own."})
    train_assistant_newline: bool = field(default=False, metadata={
        "help": "Also train the last token of each assistant header (the `\\n` after `<|assistant|>`). "
                "open-instruct with `--add_bos` trains it by accident (its label mask is computed on prefixes "
                "without the BOS, one token early), so the recipes that reproduce the published run turn this on; "
                "it is one trivially predictable token per turn."})
    assistant_only_loss: bool | None = field(default=None, metadata={
        "help": "SFT: the loss falls on the assistant turns only (open-instruct's choice, and the OLMoE recipes'); "
                "`false` trains every token. The toolkit builds the labels itself (adapt/data/tokenize.py), so this "
                "is a data setting, not TRL's `training.assistant_only_loss`. Unset: on for SFT; DPO has no such "
                "setting."})


@dataclass
class RouterSection:
    """MoE router auxiliary losses, added to the SFT loss and to the DPO policy loss.

    Each weight multiplies its loss computed on one micro-batch, and the product is added to that micro-batch's main
    loss, whose scale `training.loss_reduction` sets: with `mean` (TRL's) the main loss is a token mean over the
    global batch, with `sum` (open-instruct's) the micro-batch's summed token cross-entropy, hundreds of times larger,
    so the same weight is relatively hundreds of times weaker. recipes/olmoe-1b-7b/README.md gives the numbers.
    """

    load_balancing_weight: float = field(default=0.01, metadata={
        "help": "Switch-style load-balancing loss (the model's own `load_balancing_loss_func`, about top_k when "
                "balanced). OLMoE pretraining used 0.01 on a token-mean loss; the paper's adaptation ablation 0.001 "
                "on the summed loss.",
        "range": Range(0, True, 1e3, True, fix="use 0 to switch the loss off")})
    z_loss_weight: float = field(default=0.001, metadata={
        "help": "Router z-loss, mean over tokens of logsumexp(router logits)^2 averaged over layers; OLMoE "
                "pretraining used 0.001.",
        "range": Range(0, True, 1e3, True, fix="use 0 to switch the loss off")})
    log_stats: bool = field(default=True, metadata={
        "help": "Log per-layer router statistics (expert load shares, max/min load ratio, router entropy) at each "
                "logging step. The collapse warnings below are computed from them: `false` turns both off."})
    audit: bool = field(default=True, metadata={
        "help": "On the first training micro-batch, measure that each weighted term is non-zero, reaches every "
                "router, is not also added by TRL or the model, and ignores padding; a failure stops the run "
                "(adapt/trainers/router_audit.py)."})
    dead_expert_fraction: float = field(default=0.25, metadata={
        "help": "Collapse warnings, per MoE layer and logging window (adapt/trainers/router_health.py). More than "
                "this share of a layer's experts chosen by no token: a quarter of the experts idle over thousands "
                "of tokens is lost capacity that even routing (or the base model) does not show. 1 turns this "
                "warning off.",
        "range": Range(0, True, 1, True, fix="give a fraction")})
    entropy_drop: float = field(default=0.5, metadata={
        "help": "The expert-load entropy fell by more than this fraction of its value at the start: 0.5 leaves "
                "about the square root of the experts in use (8 of 64), far beyond the specialisation fine-tuning "
                "brings. 1 turns this warning off.",
        "range": Range(0, False, 1, True, fix="give a fraction")})
    top_expert_share: float = field(default=0.75, metadata={
        "help": "One expert in more than this share of the tokens' top-k (and over twice its even share k/E): 0.75 "
                "is 6x even for OLMoE's 8 of 64 and 3x for Mixtral's 2 of 8, where a narrow domain may favour an "
                "expert. The demo's healthy SFT (8 experts, 2 active) peaks at 62% from a random-init 52%; a "
                "collapsing router passes 80% in 3 steps. 1 turns this warning off.",
        "range": Range(0, False, 1, True, fix="give a fraction")})
    on_collapse: Literal["warn", "stop"] = field(default="warn", metadata={
        "help": "What a crossing does: `warn` (one line per layer) or `stop` (end training at that step; the run "
                "folder is marked stopped with the reason and never complete)."})


@dataclass
class ParallelSection:
    """How a stage is spread over GPUs (launched with `accelerate launch`)."""

    deepspeed: str | None = field(default=None, metadata={
        "help": "A shipped DeepSpeed preset (`zero2`, `zero3`, `zero3-offload`) or a path to a DeepSpeed JSON "
                "config."})
    expert_parallel_size: int = field(default=1, metadata={
        "help": "Over how many processes each MoE layer's experts are split (DeepSpeed AutoEP); 1: every process "
                "holds every expert.",
        "range": Range(1, True, fix="use 1 for no expert parallelism")})


@dataclass
class HubSection:
    """Push the stage's model folder to the Hugging Face Hub when it ends."""

    push: bool = field(default=False, metadata={"help": "Push when the stage ends."})
    repo_id: str | None = field(default=None, metadata={"help": "The Hub repository, ORG/NAME."})
    private: bool = field(default=False, metadata={"help": "Create the repository private."})
    revision: str | None = field(default=None, metadata={"help": "A branch; created from main when missing."})
    what: Literal["auto", "model", "adapter", "merged"] = field(default="auto", metadata={
        "help": "model: the full model; adapter: a LoRA run's adapter as is; merged: the adapter merged into its "
                "base (PEFT); auto: adapter for a LoRA run (a folder with adapter_config.json), model otherwise."})
    license: str | None = field(default=None, metadata={
        "help": "A Hub license id for the model card (apache-2.0, ...); unset: the card says so."})
    max_shard_size: str = field(default="5GB", metadata={
        "help": "A single weights file larger than this is split, as save_pretrained does."})
    allow_overwrite: bool = field(default=False, metadata={
        "help": "Replace a repository (revision) that holds a different model (`adapt push --force`); the same "
                "model again (same weights fingerprint) is always allowed."})


@dataclass(frozen=True)
class SequenceLayout:
    """How tokenized rows become training sequences: the few TRL fields the data layer reads, taken from the stage
    config once (`config.sequence_layout()`) so the data layer is handed what it uses, not the whole config."""

    max_length: int | None
    packing: bool = False
    packing_strategy: str = "bfd"
    eval_packing: bool | None = None  # None: as `packing`
    num_proc: int | None = None


# What a LoRA recipe may adapt, by name; adapt/config/families.py maps each to the family's modules or parameters.
LORA_TARGETS = ("attention", "experts", "router", "embeddings", "lm_head")


@dataclass
class PeftSection:
    """LoRA adapters instead of full fine-tuning (PEFT). Off unless `method: lora`."""

    method: Literal["none", "lora"] = field(default="none", metadata={
        "help": "`lora`: train LoRA adapters on a frozen base; `none`: full fine-tuning."})
    r: int = field(default=16, metadata={
        "help": "The adapters' rank.", "range": Range(1, True, fix="e.g. r: 16, alpha: 32, dropout: 0.0")})
    alpha: int = field(default=32, metadata={
        "help": "LoRA's alpha: the adapters' output is scaled by alpha / r.",
        "range": Range(0, False, fix="e.g. r: 16, alpha: 32, dropout: 0.0")})
    dropout: float = field(default=0.0, metadata={
        "help": "Dropout on the attention adapters (PEFT's expert-parameter adapters take none).",
        "range": Range(0, True, 1, False, fix="e.g. r: 16, alpha: 32, dropout: 0.0")})
    targets: list[str] = field(default_factory=lambda: ["attention", "experts"], metadata={
        "help": "`attention`: LoRA on the attention projections. `experts`: LoRA on the fused expert weights "
                "(PEFT's `target_parameters`; `target_modules` would silently skip transformers 5's 3-D experts). "
                "`router`, `embeddings`, `lm_head`: trained fully (a trainable copy saved with the adapter); the "
                "rest stays frozen."})
    from_adapter: Literal["merge", "continue"] = field(default="merge", metadata={
        "help": "A stage started from a LoRA run's adapter folder (DPO after a LoRA SFT): `merge` folds that adapter "
                "into its base and trains a fresh one; `continue` keeps training the same adapter (its saved r and "
                "alpha must be the recipe's). Either way the DPO reference is the SFT policy."})
    quantize: Literal["4bit", "8bit"] | None = field(default=None, metadata={
        "help": "QLoRA: the frozen base quantized by bitsandbytes. Refused for now: without CUDA, and until it is "
                "verified on a GPU for fused MoE experts (which bitsandbytes, quantizing linear layers only, would "
                "leave in bf16)."})


# ESFT (adapt/model/expert_slices.py `part_parameters`): what may stay trainable beside the selected experts.
ESFT_TRAINABLE = ("attention", "router", "shared_experts", "embeddings", "lm_head", "norms")


@dataclass
class ExpertsSection:
    """Expert-specialized fine-tuning (ESFT, DeepSeek 2024): train only the routed experts the task uses, per MoE
    layer, and freeze everything else. Off unless `select` is other than `all`."""

    select: Literal["all", "gate_score", "token_ratio", "list"] = field(default="all", metadata={
        "help": "`all`: every parameter trains (no ESFT). `gate_score`: per layer, rank experts by their average "
                "routing weight over the stage's tokens (0 where not chosen); `token_ratio`: by the share of tokens "
                "that chose them; both are computed on the router's own top-k weights and choices (sigmoid "
                "families too). `list`: the experts named in `experts`."})
    threshold: float = field(default=0.2, metadata={
        "help": "p: per layer, the highest-ranked experts are kept until their share of the criterion (normalised "
                "to sum 1 over the layer's experts) reaches p. The paper's runs use 0.1 (gate) and 0.2 (token).",
        "range": Range(0, False, 1, True,
                       fix="e.g. 0.2: keep the experts that together take 20% of the layer's routing")})
    experts: dict[int, list[int]] | None = field(default=None, metadata={
        "help": "select: list only: MoE layer number -> expert ids to train, e.g. {1: [0, 5]}; layers not named "
                "train none."})
    from_analysis: str | None = field(default=None, metadata={
        "help": "An `adapt analyze` analysis.json to rank by instead of routing the training data (token_ratio "
                "only: it keeps the experts each token chose, not their weights)."})
    analysis_model: str | None = field(default=None, metadata={
        "help": "Which analysed model of that file to read (its `--models` name); unset: the file's only model."})
    max_rows: int = field(default=2000, metadata={
        "help": "How many rows of the stage's training data are routed through the base model to rank the "
                "experts.",
        "range": Range(1, True, fix="e.g. 2000 rows of the training data")})
    train: list[str] = field(default_factory=list, metadata={
        "help": f"What else trains beside the selected experts (default: nothing): {', '.join(ESFT_TRAINABLE)}."})


SECTION_TYPES = {
    "model": ModelSection,
    "data": DataSection,
    "router": RouterSection,
    "parallel": ParallelSection,
    "hub": HubSection,
    "peft": PeftSection,
    "experts": ExpertsSection,
}
