"""The toolkit's own recipe sections: everything a recipe says that TRL's configs do not.

Each section is a plain dataclass so that the recipe loader can check keys and types against its fields, and so
that the resolved recipe written beside a model is just `dataclasses.asdict` of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# The names a recipe may use, each implemented a layer up: the recipe check refuses any other before anything
# loads, and tests/test_structure.py holds each table equal to its implementation.
SFT_FORMATS = ("messages", "conversations", "query_answer", "query_response", "alpaca", "prompt_completion")
PREFERENCE_FORMATS = ("prompt_chosen_rejected", "hh_rlhf")  # both: adapt/data/formats.py
BUILTIN_TOKENIZERS = ("demo",)  # adapt/data/tokenizer.py
DECONTAMINATION_BENCHMARKS = ("gsm8k", "mmlu", "bbh", "humaneval", "mbpp", "ifeval", "alpaca_eval", "xstest")


@dataclass
class ModelSection:
    """Which model and tokenizer a stage starts from."""

    # A Hub id (`allenai/OLMoE-1B-7B-0924`) or a local folder written by `save_pretrained` (e.g. an SFT run).
    name_or_path: str | None = None
    # Instead of loading weights: build a randomly initialised model from these config fields (tiny demo/test models).
    config: dict[str, Any] | None = None
    # The family `config` builds: a transformers `model_type` of adapt/config/families.py (olmoe, qwen3_moe,
    # qwen2_moe, mixtral, deepseek_v3, glm4_moe, gpt_oss, granitemoe).
    architecture: str = "olmoe"
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Hub id, folder or tokenizer.json file of the tokenizer; defaults to `name_or_path`. `builtin:<name>` builds one
    # of the project's own.
    tokenizer: str | None = None
    # `tulu`: the open-instruct template OLMoE-Instruct was trained with; `tokenizer`: keep the tokenizer's own.
    chat_template: Literal["tulu", "tokenizer"] = "tulu"
    # Prepend the BOS token to every example (open-instruct's `--add_bos`, used by the OLMoE recipes). A tokenizer with
    # no `bos_token` (OLMoE's) gets its EOS token as BOS, open-instruct's rule; the saved tokenizer keeps it, so
    # evaluation prompts start the way training examples did.
    add_bos: bool = False
    # How the experts run: transformers' `grouped_mm` (its default), `eager`, `batched_mm`, or the toolkit's
    # `adapt_fused` (adapt/model/fused_experts.py: the same grouped GEMMs with the routing around them fused).
    experts_implementation: Literal["grouped_mm", "eager", "batched_mm", "adapt_fused"] | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    # Special tokens to set on the tokenizer, e.g. {pad_token: "<|padding|>"}; needed for a bare tokenizer.json file.
    special_tokens: dict[str, str] = field(default_factory=dict)


@dataclass
class DataSource:
    """One input to the training mixture. Exactly one of `path`, `hub` or `task` is set."""

    path: str | None = None  # a local .jsonl / .json / .parquet / .csv file (.gz allowed for jsonl/json/csv)
    hub: str | None = None  # a Hub dataset name, e.g. allenai/tulu-v3.1-mix-preview-4096-OLMoE
    task: str | None = None  # a built-in generated task (adapt.tasks), e.g. `reverse`
    name: str | None = None  # Hub dataset config name
    split: str = "train"
    revision: str | None = None
    rows: int | None = None  # take at most this many rows (after a seeded shuffle when `shuffle`)
    shuffle: bool = False
    # Row format (adapt.data.formats), detected from the columns when not given: messages, conversations,
    # query_answer, query_response, alpaca, prompt_completion; prompt_chosen_rejected, hh_rlhf.
    format: str | None = None


@dataclass
class DataSection:
    """The training data of a stage."""

    sources: list[DataSource] = field(default_factory=list)
    # Rows held out of the mixture for the trainer's evaluation loop (0: none).
    eval_rows: int = 0
    seed: int = 0
    # A row that cannot be used (missing field, empty assistant turn, turns out of order, undecodable line):
    # `fail` stops with the file and row; `skip` drops it and counts it, by reason, in the data summary.
    on_bad_row: Literal["fail", "skip"] = "fail"
    # Benchmarks whose prompts must not leak into training: name (gsm8k, mmlu, bbh, humaneval, mbpp, ifeval,
    # alpaca_eval, xstest) -> local file or folder. A row is dropped, and listed in the data summary with the item it
    # matched, when `decontam_threshold` of an item's word `decontam_ngram`-grams occur in the row's user turns.
    decontaminate: dict[str, str] = field(default_factory=dict)
    decontam_ngram: int = 8
    decontam_threshold: float = 0.5
    # Examples longer than `training.max_length` tokens: `truncate` (open-instruct's and TRL's behaviour; a row left
    # with no assistant token is dropped) or `drop`. Both are counted per source in the data summary.
    over_length: Literal["truncate", "drop"] = "truncate"
    # Preference pairs whose chosen and rejected answers are the same teach nothing: `drop` (counted) or `keep`.
    identical_pairs: Literal["drop", "keep"] = "drop"
    # Rows that repeat an earlier row of the same source exactly: counted in the summary either way; `drop` or `keep`.
    duplicates: Literal["keep", "drop"] = "keep"
    # Keep the tokenized mixture and reuse it while nothing that changes it changes (adapt/data/cache.py).
    cache: bool = True
    cache_dir: str | None = None  # default: $ADAPT_CACHE/data, else ~/.cache/adapt/data
    # Strip leading and trailing whitespace from every message's content before the template renders it, as
    # open-instruct does. Unset: on with the tulu template (OLMoE-Instruct's training), off with the tokenizer's own.
    strip: bool | None = None
    # Also train the last token of each assistant header (the `\n` after `<|assistant|>`). open-instruct with
    # `--add_bos` trains it by accident (its label mask is computed on prefixes without the BOS, one token early), so
    # the recipes that reproduce the published run turn this on; it is one trivially predictable token per turn.
    train_assistant_newline: bool = False
    # SFT: the loss falls on the assistant turns only (open-instruct's choice, and the OLMoE recipes'); `false` trains
    # every token. The toolkit builds the labels itself (adapt/data/tokenize.py), so this is a data setting, not
    # TRL's `training.assistant_only_loss`. Unset: on for SFT; DPO has no such setting.
    assistant_only_loss: bool | None = None


@dataclass
class RouterSection:
    """MoE router auxiliary losses, added to the SFT loss and to the DPO policy loss.

    Each weight multiplies its loss computed on one micro-batch, and the product is added to that micro-batch's main
    loss, whose scale `training.loss_reduction` sets: with `mean` (TRL's) the main loss is a token mean over the
    global batch, with `sum` (open-instruct's) the micro-batch's summed token cross-entropy, hundreds of times larger,
    so the same weight is relatively hundreds of times weaker. recipes/olmoe-1b-7b/README.md gives the numbers.
    """

    # Switch-style load-balancing loss (the model's own `load_balancing_loss_func`, about top_k when balanced).
    # OLMoE pretraining used 0.01 on a token-mean loss; the paper's adaptation ablation 0.001 on the summed loss.
    load_balancing_weight: float = 0.01
    # Router z-loss, mean over tokens of logsumexp(router logits)^2 averaged over layers; OLMoE pretraining used 0.001.
    z_loss_weight: float = 0.001
    # Log per-layer router statistics (expert load shares, max/min load ratio, router entropy) at each logging step.
    # The collapse warnings below are computed from them: `false` turns both off.
    log_stats: bool = True
    # On the first training micro-batch, measure that each weighted term is non-zero, reaches every router, is not
    # also added by TRL or the model, and ignores padding; a failure stops the run (adapt/trainers/router_audit.py).
    audit: bool = True
    # Collapse warnings, per MoE layer and logging window (adapt/trainers/router_health.py). More than this share of
    # a layer's experts chosen by no token: a quarter of the experts idle over thousands of tokens is lost capacity
    # that even routing (or the base model) does not show.
    dead_expert_fraction: float = 0.25
    # The expert-load entropy fell by more than this fraction of its value at the start: 0.5 leaves about the square
    # root of the experts in use (8 of 64), far beyond the specialisation fine-tuning brings.
    entropy_drop: float = 0.5
    # One expert in more than this share of the tokens' top-k (and over twice its even share k/E): 0.75 is 6x even
    # for OLMoE's 8 of 64 and 3x for Mixtral's 2 of 8, where a narrow domain may favour an expert. The demo's healthy
    # SFT (8 experts, 2 active) peaks at 62% from a random-init 52%; a collapsing router passes 80% in 3 steps.
    top_expert_share: float = 0.75
    # What a crossing does: `warn` (one line per layer) or `stop` (end training at that step; the run folder is marked
    # stopped with the reason and never complete).
    on_collapse: Literal["warn", "stop"] = "warn"


@dataclass
class ParallelSection:
    """How a stage is spread over GPUs (launched with `accelerate launch`)."""

    # A shipped DeepSpeed preset (`zero2`, `zero3`, `zero3-offload`) or a path to a DeepSpeed JSON config.
    deepspeed: str | None = None
    expert_parallel_size: int = 1


@dataclass
class HubSection:
    """Push the stage's model folder to the Hugging Face Hub when it ends."""

    push: bool = False
    repo_id: str | None = None  # ORG/NAME
    private: bool = False
    revision: str | None = None  # a branch; created from main when missing
    # model: the full model; adapter: a LoRA run's adapter as is; merged: the adapter merged into its base (PEFT);
    # auto: adapter for a LoRA run (a folder with adapter_config.json), model otherwise.
    what: Literal["auto", "model", "adapter", "merged"] = "auto"
    license: str | None = None  # a Hub license id for the model card (apache-2.0, ...); unset: the card says so
    max_shard_size: str = "5GB"  # a single weights file larger than this is split, as save_pretrained does
    # Replace a repository (revision) that holds a different model (`adapt push --force`); the same model again
    # (same weights fingerprint) is always allowed.
    allow_overwrite: bool = False


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

    method: Literal["none", "lora"] = "none"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0  # on the attention adapters (PEFT's expert-parameter adapters take none)
    # `attention`: LoRA on the attention projections. `experts`: LoRA on the fused expert weights (PEFT's
    # `target_parameters`; `target_modules` would silently skip transformers 5's 3-D experts). `router`,
    # `embeddings`, `lm_head`: trained fully (a trainable copy saved with the adapter); the rest stays frozen.
    targets: list[str] = field(default_factory=lambda: ["attention", "experts"])
    # A stage started from a LoRA run's adapter folder (DPO after a LoRA SFT): `merge` folds that adapter into its
    # base and trains a fresh one; `continue` keeps training the same adapter (its saved r and alpha must be the
    # recipe's). Either way the DPO reference is the SFT policy.
    from_adapter: Literal["merge", "continue"] = "merge"
    # QLoRA: the frozen base quantized by bitsandbytes. Refused for now: without CUDA, and until it is verified on a
    # GPU for fused MoE experts (which bitsandbytes, quantizing linear layers only, would leave in bf16).
    quantize: Literal["4bit", "8bit"] | None = None


# ESFT (adapt/model/expert_slices.py `part_parameters`): what may stay trainable beside the selected experts.
ESFT_TRAINABLE = ("attention", "router", "shared_experts", "embeddings", "lm_head", "norms")


@dataclass
class ExpertsSection:
    """Expert-specialized fine-tuning (ESFT, DeepSeek 2024): train only the routed experts the task uses, per MoE
    layer, and freeze everything else. Off unless `select` is other than `all`."""

    # `all`: every parameter trains (no ESFT). `gate_score`: per layer, rank experts by their average routing weight
    # over the stage's tokens (0 where not chosen); `token_ratio`: by the share of tokens that chose them; both are
    # computed on the router's own top-k weights and choices (sigmoid families too). `list`: the experts named below.
    select: Literal["all", "gate_score", "token_ratio", "list"] = "all"
    # p in (0, 1]: per layer, the highest-ranked experts are kept until their share of the criterion (normalised to
    # sum 1 over the layer's experts) reaches p. The paper's runs use 0.1 (gate) and 0.2 (token).
    threshold: float = 0.2
    # select: list only: MoE layer number -> expert ids to train, e.g. {1: [0, 5]}; layers not named train none.
    experts: dict[int, list[int]] | None = None
    # An `adapt analyze` analysis.json to rank by instead of routing the training data (token_ratio only: it keeps
    # the experts each token chose, not their weights).
    from_analysis: str | None = None
    # Which analysed model of that file to read (its `--models` name); unset: the file's only model.
    analysis_model: str | None = None
    # How many rows of the stage's training data are routed through the base model to rank the experts.
    max_rows: int = 2000
    # What else trains beside the selected experts (default: nothing): attention, router, shared_experts,
    # embeddings, lm_head, norms.
    train: list[str] = field(default_factory=list)


SECTION_TYPES = {
    "model": ModelSection,
    "data": DataSection,
    "router": RouterSection,
    "parallel": ParallelSection,
    "hub": HubSection,
    "peft": PeftSection,
    "experts": ExpertsSection,
}
