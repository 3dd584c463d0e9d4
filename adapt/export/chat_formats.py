"""The chat formats `adapt export ollama` can write a TEMPLATE for, as data: one record per format.

Ollama formats a conversation with the Modelfile's TEMPLATE, a Go text/template executed over `.Messages` (each
with `.Role` and `.Content`); a run formats it with its Jinja chat template. Jinja has no general translation to Go,
so each format here has a Go twin written by hand, and a run's template is recognised by what it writes, not by its
text: `recognise` renders it (transformers' `apply_chat_template`) on PROBES, conversations with and without a system
message, of one to three turns, ending on the user with the generation prompt and ending on the assistant without,
and compares with each record's own Python rendering of the format. The first record that agrees on every probe is
the run's format. tests/test_ollama_templates.py renders each Go twin with Go's text/template on the same
conversations and checks it writes the Jinja's prompt byte for byte.

Plain text conversations only: system, user and assistant messages whose content is a string, alternating user and
assistant after an optional first system message; no tools, no documents, no reasoning content. Within that, the
twins assume what plain answers are: Qwen3 and DeepSeek cut an answer at `</think>` (and Qwen3 strips the leading
newlines of its last answer), which the Go twins do not, and GPT-OSS's Jinja refuses an answer holding `<|channel|>`
tags, which its twin writes; no probe has any of these. Ollama merges consecutive messages of one role before it
renders (joined by a blank line), so non-alternating conversations reach the TEMPLATE merged.

When does the generation prompt come: Ollama renders every message and leaves the rest to the template, so each Go
twin writes the assistant header after a last message that is not the assistant's, which is what the Jinja writes
with add_generation_prompt=True; a conversation ending on the assistant renders as the Jinja does without it (a
prefill Ollama continues).

The Go twins use the standard text/template builtins (range, if, eq, ne, and, not, len, slice, index) and, for
GPT-OSS's date, Ollama's `currentDate` (YYYY-MM-DD, today on the machine that renders; tests/scripts/go_template/
render.go defines it as Ollama does). Where a format's Jinja refuses a conversation (raise_exception: Mixtral's
system messages), its twin fails too: `index "<why>" -1` stops the template, and Ollama reports the error with that
text in it. `@BOS@`/`@EOS@` stand for the run's tokens, as the Jinja's `bos_token`/`eos_token` print them.

Some formats cannot have a Go twin (Granite 3.1-3.3: a date as "December 07, 2026", which `currentDate` cannot print):
their record keeps the reason (`refusal`) and `recognise` still names them, so the refusal says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ChatFormat:
    name: str
    source: str  # the models whose chat template writes this format
    # The format in Python: (messages, add_generation_prompt, bos, eos) -> the prompt, or None for a conversation the
    # Jinja refuses (raise_exception)
    render: Callable[[Messages, bool, str, str], str | None]
    go: str | None  # the Go twin, @BOS@/@EOS@ for the run's tokens; None where there can be none ...
    refusal: str = ""  # ... and why
    stops: tuple[str, ...] = ()  # end-of-turn markers the template writes, beside the run's EOS (Modelfile `stop`)

    def go_template(self, bos: str, eos: str) -> str:
        assert self.go is not None, self.name
        return self.go.replace("@BOS@", bos).replace("@EOS@", eos)


# Three turns whose contents tell formats apart: spaces at the ends and inside (a template that strips them is another
# format), a newline, non-ASCII text
_TURNS = [{"role": "user", "content": "Reverse the word: abc"}, {"role": "assistant", "content": "cba"},
          {"role": "user", "content": " Two  spaces,\na newline "}, {"role": "assistant", "content": "Noted: é ✓ "},
          {"role": "user", "content": "Last one?"}, {"role": "assistant", "content": "Yes."}]
_SYSTEM = {"role": "system", "content": "You answer briefly."}
# Ending on the user (one, two and three turns), ending on the assistant (the same), with and without a system message
PROBES: list[Messages] = [*(_TURNS[:n] for n in range(1, 7)),
                          *([_SYSTEM, *_TURNS[:n]] for n in (1, 2, 5, 6))]


def generation_prompt(messages: Messages) -> bool:
    """Ollama's rule, which the Go twins follow: the assistant header comes after a last message not the assistant's."""
    return messages[-1]["role"] != "assistant"


# --- tulu: the toolkit's own (adapt/data/templates/tulu.jinja), OLMoE-Instruct's ---

TULU_GO = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}<|system|>
{{ .Content }}
{{ else if eq .Role "user" }}<|user|>
{{ .Content }}
{{ else if eq .Role "assistant" }}<|assistant|>
{{ .Content }}@EOS@{{ if not $last }}
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}"""


def _tulu(messages: Messages, prompt: bool, bos: str, eos: str) -> str:
    out = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            out += f"<|assistant|>\n{m['content']}{eos}" + ("" if i == len(messages) - 1 else "\n")
        else:
            out += f"<|{m['role']}|>\n{m['content']}\n"
    return out + ("<|assistant|>\n" if prompt else "")


# --- ChatML: `<|im_start|>role\ncontent<|im_end|>\n`, as OpenHermes, Qwen2.5 and Qwen3 write it ---

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _chatml_go(default_system: str = "", think: bool = False) -> str:
    """ChatML in Go: `default_system` where the first message is not a system one (Qwen2.5); `think`: Qwen3's empty
    thinking block in a last assistant message that answers a user one."""
    default = (f'{{{{ if and (eq $i 0) (ne .Role "system") }}}}<|im_start|>system\n{default_system}<|im_end|>\n'
               "{{ end }}" if default_system else "")
    # Qwen3: whether a user message came before, and whether this message is the last
    seen, last = ("{{ $user := false }}", "{{ $last := eq (len (slice $.Messages $i)) 1 }}") if think else ("", "")
    block = '{{ if and $last $user (eq .Role "assistant") }}<think>\n\n</think>\n\n{{ end }}' if think else ""
    user = '{{ if eq .Role "user" }}{{ $user = true }}{{ end }}' if think else ""
    return (f'{{{{- $role := "" }}}}{seen}\n'
            f"{{{{- range $i, $_ := .Messages }}}}{last}{default}<|im_start|>{{{{ .Role }}}}\n"
            f"{block}{{{{ .Content }}}}<|im_end|>\n"
            f"{user}{{{{ $role = .Role }}}}\n"
            "{{- end }}\n"
            '{{- if ne $role "assistant" }}<|im_start|>assistant\n'
            "{{ end }}")


def _chatml(default_system: str = "", think: bool = False):
    def render(messages: Messages, prompt: bool, bos: str, eos: str) -> str:
        out = f"<|im_start|>system\n{default_system}<|im_end|>\n" if default_system and (
            messages[0]["role"] != "system") else ""
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        for i, m in enumerate(messages):
            # Qwen3 marks the answer to the last user message as one without reasoning
            block = think and m["role"] == "assistant" and i == len(messages) - 1 and users and i > users[-1]
            out += f"<|im_start|>{m['role']}\n" + ("<think>\n\n</think>\n\n" if block else "") + \
                f"{m['content']}<|im_end|>\n"
        return out + ("<|im_start|>assistant\n" if prompt else "")
    return render


# --- Mistral's [INST]: Mixtral-8x7B-Instruct-v0.1 as released, and Mistral's later "v1" with a system message ---

def _go_error(why: str) -> str:
    # A Go template cannot raise; indexing a string at -1 stops it with an error that quotes the string
    return f'{{{{ index "{why}" -1 }}}}'


_ALTERNATE = ("Mixtral's chat template refuses this conversation: user and assistant messages only, alternating "
              "from a user one")
_ALTERNATE_V1 = ("Mistral's chat template refuses this conversation: after an optional system message, user and "
                 "assistant messages only, alternating from a user one")

MIXTRAL_GO = ("@BOS@{{ $user := true }}\n"
              "{{- range .Messages }}\n"
              f'{{{{- if ne (eq .Role "user") $user }}}}{_go_error(_ALTERNATE)}{{{{ end }}}}\n'
              '{{- if eq .Role "user" }}[INST] {{ .Content }} [/INST]\n'
              '{{- else if eq .Role "assistant" }}{{ .Content }}@EOS@\n'
              f"{{{{- else }}}}{_go_error(_ALTERNATE)}\n"
              "{{- end }}{{ $user = not $user }}\n"
              "{{- end }}")


def _alternates(messages: Messages) -> bool:
    return all((m["role"] == "user") == (i % 2 == 0) and m["role"] in ("user", "assistant")
               for i, m in enumerate(messages))


def _mixtral(messages: Messages, prompt: bool, bos: str, eos: str) -> str | None:
    if not _alternates(messages):
        return None
    return bos + "".join(f"[INST] {m['content']} [/INST]" if m["role"] == "user" else m["content"] + eos
                         for m in messages)


MISTRAL_V1_GO = ("@BOS@{{ $user := true }}{{ $system := \"\" }}{{ $has := false }}\n"
                 "{{- range $i, $_ := .Messages }}\n"
                 '{{- if and (eq $i 0) (eq .Role "system") }}{{ $system = .Content }}{{ $has = true }}\n'
                 "{{- else }}\n"
                 f'{{{{- if ne (eq .Role "user") $user }}}}{_go_error(_ALTERNATE_V1)}{{{{ end }}}}\n'
                 '{{- if eq .Role "user" }} [INST] {{ if and $has (eq $i 1) }}{{ $system }}\n\n{{ end }}'
                 "{{ .Content }} [/INST]\n"
                 '{{- else if eq .Role "assistant" }} {{ .Content }}@EOS@\n'
                 f"{{{{- else }}}}{_go_error(_ALTERNATE_V1)}\n"
                 "{{- end }}{{ $user = not $user }}\n"
                 "{{- end }}\n"
                 "{{- end }}")


def _mistral_v1(messages: Messages, prompt: bool, bos: str, eos: str) -> str | None:
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    rest = messages[1:] if system is not None else messages
    if not _alternates(rest):
        return None
    out = bos
    for i, m in enumerate(rest):
        if m["role"] == "user":
            head = f"{system}\n\n" if i == 0 and system is not None else ""  # the system message opens the first
            out += f" [INST] {head}{m['content']} [/INST]"
        else:
            out += f" {m['content']}{eos}"
    return out


# --- DeepSeek-V3: the system messages first (joined by a blank line), then `<｜User｜>`/`<｜Assistant｜>` turns ---

DS_EOS = "<｜end▁of▁sentence｜>"
_DS_SYSTEM_GO = ("@BOS@{{ $first := true }}\n"
                 "{{- range .Messages }}\n"
                 '{{- if eq .Role "system" }}{{ if not $first }}\n\n{{ end }}'
                 "{{ .Content }}{{ $first = false }}{{ end }}\n"
                 "{{- end }}\n")

DEEPSEEK_V3_GO = (_DS_SYSTEM_GO + "{{- $role := \"\" }}\n"
                  "{{- range .Messages }}\n"
                  '{{- if eq .Role "user" }}<｜User｜>{{ .Content }}\n'
                  f'{{{{- else if eq .Role "assistant" }}}}<｜Assistant｜>{{{{ .Content }}}}{DS_EOS}\n'
                  "{{- end }}{{ $role = .Role }}\n"
                  "{{- end }}\n"
                  '{{- if ne $role "assistant" }}<｜Assistant｜><think>\n{{ end }}')

# V3.1 opens an answer only after a user message, with an empty thinking block (thinking off, its default)
DEEPSEEK_V31_GO = (_DS_SYSTEM_GO + "{{- $afterUser := false }}\n"
                   "{{- range .Messages }}\n"
                   '{{- if eq .Role "user" }}<｜User｜>{{ .Content }}{{ $afterUser = true }}\n'
                   '{{- else if eq .Role "assistant" }}{{ if $afterUser }}<｜Assistant｜><think></think>{{ end }}'
                   f"{{{{ .Content }}}}{DS_EOS}{{{{ $afterUser = false }}}}\n"
                   "{{- end }}\n"
                   "{{- end }}\n"
                   "{{- if $afterUser }}<｜Assistant｜><think></think>{{ end }}")


def _deepseek(v31: bool):
    def render(messages: Messages, prompt: bool, bos: str, eos: str) -> str:
        out = bos + "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        after_user = False
        for m in messages:
            if m["role"] == "user":
                out += f"<｜User｜>{m['content']}"
                after_user = True
            elif m["role"] == "assistant":
                opens = after_user if v31 else True
                out += ("<｜Assistant｜>" + ("<think></think>" if v31 else "") if opens else "") + m["content"] + DS_EOS
                after_user = False
        if prompt and (after_user or not v31):
            out += "<｜Assistant｜><think></think>" if v31 else "<｜Assistant｜><think>\n"
        return out
    return render


# --- Granite: `<|start_of_role|>role<|end_of_role|>content<|end_of_text|>\n` ---

GRANITE_4_SYSTEM = "You are a helpful assistant. Please ensure responses are professional, accurate, and safe."


def _granite_go(default_system: str = "") -> str:
    default = ('{{ if and (eq $i 0) (ne .Role "system") }}<|start_of_role|>system<|end_of_role|>'
               f"{default_system}<|end_of_text|>\n{{{{ end }}}}" if default_system else "")
    return ('{{- $role := "" }}\n'
            f"{{{{- range $i, $_ := .Messages }}}}{default}"
            "<|start_of_role|>{{ .Role }}<|end_of_role|>{{ .Content }}<|end_of_text|>\n"
            "{{ $role = .Role }}\n"
            "{{- end }}\n"
            '{{- if ne $role "assistant" }}<|start_of_role|>assistant<|end_of_role|>{{ end }}')


def _granite_default_3_3(messages: Messages) -> str:
    # strftime_now('%B %d, %Y'): transformers' clock, read when the template renders
    return (f"Knowledge Cutoff Date: April 2024. Today's Date: {datetime.now().strftime('%B %d, %Y')}. "
            "You are Granite, developed by IBM. You are a helpful AI assistant.")


# Granite 3.1-3.3's default system message cannot have a Go twin
_GRANITE_DATE = ("prints today's date as strftime_now('%B %d, %Y') (\"December 07, 2026\") in its default system "
                 "message, and Ollama's only date function, currentDate, prints YYYY-MM-DD (it ignores its format "
                 "argument), so no Ollama TEMPLATE writes that prompt")


def _granite(default_system: Callable[[Messages], str] | None = None):
    def render(messages: Messages, prompt: bool, bos: str, eos: str) -> str:
        out = ""
        if default_system and messages[0]["role"] != "system":
            out = f"<|start_of_role|>system<|end_of_role|>{default_system(messages)}<|end_of_text|>\n"
        for m in messages:
            out += f"<|start_of_role|>{m['role']}<|end_of_role|>{m['content']}<|end_of_text|>\n"
        return out + ("<|start_of_role|>assistant<|end_of_role|>" if prompt else "")
    return render


# --- GPT-OSS: the harmony format: a fixed system message with today's date, answers in the final channel ---

# Ollama's `currentDate` prints the date as YYYY-MM-DD, which is what the Jinja's strftime_now("%Y-%m-%d") prints
_HARMONY_SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                   "Knowledge cutoff: 2024-06\nCurrent date: {date}\n\nReasoning: medium\n\n"
                   "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>")

# A first system message is the developer's instructions (dropped when empty), later ones are not written; the last
# answer of a conversation ending on the assistant ends with <|return|> (the Jinja without the generation prompt)
GPT_OSS_GO = (_HARMONY_SYSTEM.format(date="{{ currentDate }}") + '{{ $role := "" }}\n'
              "{{- range $i, $_ := .Messages }}\n"
              '{{- if and (eq $i 0) (eq .Role "system") }}{{ if .Content }}<|start|>developer<|message|># Instructions'
              "\n\n{{ .Content }}\n\n<|end|>{{ end }}\n"
              '{{- else if eq .Role "user" }}<|start|>user<|message|>{{ .Content }}<|end|>\n'
              '{{- else if eq .Role "assistant" }}<|start|>assistant<|channel|>final<|message|>{{ .Content }}'
              "{{ if eq (len (slice $.Messages $i)) 1 }}<|return|>{{ else }}<|end|>{{ end }}\n"
              "{{- end }}{{ $role = .Role }}\n"
              "{{- end }}\n"
              '{{- if ne $role "assistant" }}<|start|>assistant{{ end }}')


def _gpt_oss(messages: Messages, prompt: bool, bos: str, eos: str) -> str:
    out = _HARMONY_SYSTEM.format(date=datetime.now().strftime("%Y-%m-%d"))
    if messages[0]["role"] == "system":
        if messages[0]["content"]:
            out += f"<|start|>developer<|message|># Instructions\n\n{messages[0]['content']}\n\n<|end|>"
        messages = messages[1:]
    for i, m in enumerate(messages):
        if m["role"] == "user":
            out += f"<|start|>user<|message|>{m['content']}<|end|>"
        elif m["role"] == "assistant":  # the final answer of training data ends with <|return|>, earlier ones <|end|>
            end = "<|return|>" if i == len(messages) - 1 and not prompt else "<|end|>"
            out += f"<|start|>assistant<|channel|>final<|message|>{m['content']}{end}"
    return out + ("<|start|>assistant" if prompt else "")


FORMATS: tuple[ChatFormat, ...] = (
    ChatFormat("tulu", "the toolkit's `tulu` (OLMoE-Instruct's)", _tulu, TULU_GO),
    ChatFormat("tulu+bos", "the toolkit's `tulu` with the BOS first", lambda m, p, b, e: b + _tulu(m, p, b, e),
               "@BOS@" + TULU_GO),
    ChatFormat("chatml", "ChatML without a default system message (OpenHermes-2.5)", _chatml(), _chatml_go(),
               stops=("<|im_end|>",)),
    ChatFormat("qwen2.5", "Qwen2.5-Instruct's ChatML", _chatml(QWEN_SYSTEM), _chatml_go(QWEN_SYSTEM),
               stops=("<|im_end|>",)),
    ChatFormat("qwen3", "Qwen3's ChatML", _chatml(think=True), _chatml_go(think=True), stops=("<|im_end|>",)),
    ChatFormat("mixtral", "Mixtral-8x7B-Instruct-v0.1's [INST] as released (no system message)", _mixtral,
               MIXTRAL_GO),
    ChatFormat("mistral-v1", "Mistral's [INST] with a system message (Mistral-7B-Instruct's and Mixtral's 'v1')",
               _mistral_v1, MISTRAL_V1_GO),
    ChatFormat("deepseek-v3", "DeepSeek-V3's", _deepseek(v31=False), DEEPSEEK_V3_GO, stops=(DS_EOS,)),
    ChatFormat("deepseek-v3.1", "DeepSeek-V3.1's (thinking off)", _deepseek(v31=True), DEEPSEEK_V31_GO,
               stops=(DS_EOS,)),
    ChatFormat("granite", "Granite 3.0's and 4.1's (no default system message)", _granite(), _granite_go(),
               stops=("<|end_of_text|>",)),
    ChatFormat("granite-4.0", "Granite 4.0's (a fixed default system message)",
               _granite(lambda _: GRANITE_4_SYSTEM), _granite_go(GRANITE_4_SYSTEM), stops=("<|end_of_text|>",)),
    ChatFormat("granite-3.3", "Granite 3.1-3.3's", _granite(_granite_default_3_3), None,
               refusal=_GRANITE_DATE),
    ChatFormat("gpt-oss", "GPT-OSS's harmony format (plain answers, reasoning effort medium)", _gpt_oss, GPT_OSS_GO,
               stops=("<|return|>", "<|call|>")),
)


def jinja_render(tokenizer, messages: Messages) -> str | None:
    """What the run's Jinja template writes for a conversation, None where it refuses it."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt(messages))
    except Exception:  # noqa: BLE001 - raise_exception, or any failure: the template does not render this one
        return None


def recognise(tokenizer) -> ChatFormat | None:
    """The format whose Python rendering equals the run's Jinja on every probe, or None."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    written = [jinja_render(tokenizer, messages) for messages in PROBES]
    if all(w is None for w in written):
        return None
    for fmt in FORMATS:
        if all(fmt.render(m, generation_prompt(m), bos, eos) == w for m, w in zip(PROBES, written, strict=True)):
            return fmt
    return None
