"""Which llama.cpp pre-tokenizer splits text as a tokenizer.json does: one record per pre-tokenizer, with the regexes
as Hugging Face writes them in tokenizer.json and the other setting llama.cpp ties to the name that changes tokens.

llama.cpp does not read regexes from the file: `tokenizer.ggml.pre` names a fixed list of them. Cited lines are
src/llama-vocab.cpp of the llama.cpp that llama-cpp-python 0.3.36 vendors: the lists in `llm_tokenizer_bpe`'s switch
on the pre-type (lines 280-570), the name -> pre-type table and per-name settings in `llama_vocab::impl::load`
(2155-2430). llama.cpp applies a list as tokenizers applies a `Sequence` of `Split(behavior="Isolated")`: each regex
splits every piece the previous ones left, matches and the text between them alike. The regexes are compared, not
the name a family's converter would write, because the name must follow the tokenizer (a fine-tune may swap it) and a
name whose regexes differ splits some text differently, silently. Several names share one list; a record keeps the
one llama.cpp's converter writes for a model the toolkit exports with it (convert_hf_to_gguf_update.py's hashes).
Per-name `clean_spaces` changes only detokenization; a per-name BOS default only where the file names no BOS.

A tokenizer.json pre-tokenizer is read as its list of regexes: `Split` gives its regex, `Digits` \\p{N} (one digit
a piece) or \\p{N}+, a final `ByteLevel` with `use_regex` the GPT-2 regex (tokenizers' `ByteLevel::regex`); any
other step, a `ByteLevel` that is not last, a prefix space, an inverted or non-isolating split is refused. Literal
CR/LF/tab in a regex are read as their escapes (DeepSeek-V3's file has literal ones where Llama-3's has `\\r\\n`).
"""

from __future__ import annotations

from dataclasses import dataclass

from adapt.export.architectures import ExportError

# tokenizers' ByteLevel(use_regex=true) regex (GPT-2's); llama.cpp's copy ends at `\s+(?!\S)`, the same split since
# its unmatched whitespace stays a piece of its own.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"  # llama.cpp spells it (?:'[sS]|'[tT]|...) for std::regex
QWEN2 = CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3 = CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + CONTRACTIONS + "?"
         + r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + CONTRACTIONS + "?"
         + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_V3 = (r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
               r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
               r"""| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # tokenizer.ggml.pre
    regexes: tuple[str, ...]  # as tokenizer.json writes them, in order
    # llama.cpp sets `ignore_merges` for the name: a word that is a token is taken whole, before any merge; the
    # BPE's own `ignore_merges` must agree, or a word the merges would split differently is tokenized differently
    ignore_merges: bool = False


PRE_TOKENIZERS = [
    # regexes 372-381 (as gpt-2, mpt, jais, trillion, granite-docling), name 2273: OLMoE's, the demo tokenizer's
    PreTokenizer("olmo", (GPT2,)),
    # 359-371 (as starcoder, command-r, smollm, ...), name 2252: Digits(individual_digits) + ByteLevel, Granite 3's
    PreTokenizer("refact", (r"\p{N}", GPT2)),
    # 382-391 (as stablelm2, hunyuan, ...), names 2259-2263: Qwen2.5's and Qwen3's
    PreTokenizer("qwen2", (QWEN2,)),
    # 319-328 (as hunyuan-dense, hy_v4, ...), name 2195: DeepSeek-V3's three Splits
    PreTokenizer("deepseek-v3", DEEPSEEK_V3),
    # 406-410 (284-292, llama3: the same list), names 2290-2294 with ignore_merges: GLM-4.5's, Llama 3's. Not
    # "llama-bpe": that name adds a BOS by default, where "glm4" has none unless the file names one
    PreTokenizer("glm4", (LLAMA3,), ignore_merges=True),
    # 302-308 (dbrx, smaug-bpe), name 2276: the same list, every word merged
    PreTokenizer("dbrx", (LLAMA3,)),
    # 438-445 (as llama4, minimax-m2), names 2342-2347: o200k, GPT-OSS's
    PreTokenizer("gpt-4o", (O200K,)),
]

SPLIT_BEHAVIOUR = "Isolated"


def canonical(regex: str) -> str:
    return regex.replace("\r", r"\r").replace("\n", r"\n").replace("\t", r"\t")


def shortened(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def regexes_of(pre: dict | None) -> tuple[str, ...]:
    """The regex list a tokenizer.json `pre_tokenizer` applies before its byte-level mapping; ExportError where it is
    not such a list."""
    pre = pre or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not steps or steps[-1].get("type") != "ByteLevel":
        raise ExportError(f"pre-tokenizer {describe(pre)}; the GGUF export writes byte-level BPE (a pre-tokenizer "
                          "ending in ByteLevel) only")
    regexes = [step_regex(step) for step in steps[:-1]]
    last = steps[-1]
    if last.get("add_prefix_space"):
        raise ExportError("pre-tokenizer ByteLevel with add_prefix_space True; llama.cpp's byte-level BPE adds no "
                          "prefix space")
    if last.get("use_regex", True):
        regexes.append(GPT2)
    return tuple(canonical(r) for r in regexes)


def step_regex(step: dict) -> str:
    kind = step.get("type")
    if kind == "Digits":
        return r"\p{N}" if step.get("individual_digits") else r"\p{N}+"
    if kind == "Split" and "Regex" in (step.get("pattern") or {}) and not step.get("invert") \
            and step.get("behavior") == SPLIT_BEHAVIOUR:
        return step["pattern"]["Regex"]
    raise ExportError(f"pre-tokenizer step {describe(step)}; llama.cpp splits by regexes (isolated) only and would "
                      "split text differently")


def describe(step: dict | None) -> str:
    """A pre-tokenizer (step) in a few words: its type, a Split's pattern and behaviour, a Sequence's step types."""
    kind = (step or {}).get("type")
    if kind == "Split":
        pattern = shortened(canonical(str(next(iter((step.get("pattern") or {}).values()), ""))))
        return f"Split '{pattern}' ({step.get('behavior')}{', inverted' if step.get('invert') else ''})"
    if kind == "Sequence":
        return f"Sequence ({', '.join(str(s.get('type')) for s in step.get('pretokenizers', []))})"
    return str(kind) if kind else "none"


def llama_cpp_pre_tokenizer(pre: dict | None, ignore_merges: bool) -> PreTokenizer:
    """The record whose regexes are exactly the tokenizer's, with the same `ignore_merges`; ExportError (one line)
    otherwise."""
    regexes = regexes_of(pre)
    same_regexes = [p for p in PRE_TOKENIZERS if tuple(canonical(r) for r in p.regexes) == regexes]
    for p in same_regexes:
        if p.ignore_merges == bool(ignore_merges):
            return p
    if same_regexes:
        other = same_regexes[0]
        does = "takes a word that is a token whole" if other.ignore_merges else "applies the merges to every word"
        raise ExportError(f"BPE ignore_merges {bool(ignore_merges)}, but llama.cpp's pre-tokenizer with these regexes "
                          f"({other.name!r}) {does}: llama.cpp would tokenize some words differently")
    shown = " then ".join(f"'{shortened(r)}'" for r in regexes)  # not repr: it would double each backslash
    raise ExportError(f"pre-tokenizer regex {shown}: none of the llama.cpp pre-tokenizers checked here "
                      f"({', '.join(p.name for p in PRE_TOKENIZERS)}) has these regexes, under any of them llama.cpp "
                      "would split text differently")
