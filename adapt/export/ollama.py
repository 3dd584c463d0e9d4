"""`adapt export ollama RUN_DIR --output DIR`: the run as an Ollama model: `model.gguf` (adapt.export.gguf_file) and a
`Modelfile` whose TEMPLATE writes the prompt the run's chat template writes and whose stops are the run's EOS and the
format's end-of-turn markers.

Ollama's TEMPLATE is a Go template; a Jinja chat template cannot be translated in general, so each chat format the
toolkit knows has its Go twin, and the run's template is recognised by what it writes on plain conversations
(adapt.export.chat_formats: tulu, ChatML as OpenHermes, Qwen2.5 and Qwen3 write it, Mixtral's and Mistral's [INST],
DeepSeek-V3 and V3.1, Granite, GPT-OSS's harmony with Ollama's `currentDate`). A run whose template is none of them,
or one that no Ollama template can write (Granite 3.1-3.3 print today's date as "December 07, 2026"; Ollama's
`currentDate` prints 2026-12-07 only), is refused in one line before anything is written; its GGUF still carries the
Jinja template as `tokenizer.chat_template`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapt.export.architectures import ExportError
from adapt.export.chat_formats import FORMATS, TULU_GO, ChatFormat, recognise
from adapt.export.gguf_file import check_export, write_gguf

__all__ = ["TULU_GO", "OllamaExport", "export_ollama", "go_template", "modelfile"]
_BY_HAND = ("`adapt export gguf` writes the model alone (the GGUF carries the Jinja template as "
            "tokenizer.chat_template): write the Modelfile's TEMPLATE by hand")


@dataclass
class OllamaExport:
    folder: Path
    gguf: Path
    modelfile: Path
    command: str


def go_template(tokenizer) -> tuple[str, ChatFormat]:
    """The Go twin of the run's chat template (with the run's BOS and EOS) and its format, or an ExportError that
    says why there is none."""
    if not tokenizer.chat_template:
        raise ExportError("the run's tokenizer has no chat template; Ollama needs one to format conversations")
    fmt = recognise(tokenizer)
    if fmt is None:
        known = ", ".join(f.name for f in FORMATS)
        raise ExportError(f"the run's chat template is not one the toolkit ships a Go TEMPLATE for: on plain "
                          f"conversations it writes what none of {known} writes; {_BY_HAND}")
    if fmt.go is None:
        raise ExportError(f"the run's chat template is {fmt.source} ({fmt.name}): it {fmt.refusal}; {_BY_HAND}")
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    if "{{" in bos + eos:  # the tokens go into the Go template as text
        raise ExportError(f"the run's BOS/EOS ({bos!r}, {eos!r}) contain '{{{{', which a Go template reads as an "
                          f"action; {_BY_HAND}")
    return fmt.go_template(bos, eos), fmt


def modelfile(template: str, stops: list[str], run: Path, fmt: str = "") -> str:
    if '"""' in template:
        raise ExportError('the chat template contains """, which a Modelfile cannot quote')
    if any('"' in stop for stop in stops):
        raise ExportError(f"a stop sequence contains a double quote, which a Modelfile parameter cannot quote: {stops}")
    written = f" (chat format {fmt})" if fmt else ""
    return (f"# Written by `adapt export ollama` from the run folder {run}{written}.\n"
            "FROM ./model.gguf\n"
            f'TEMPLATE """{template}"""\n'
            + "".join(f'PARAMETER stop "{stop}"\n' for stop in stops))


def export_ollama(run_dir: str | Path, output: str | Path, type_: str = "auto",
                  name: str | None = None) -> OllamaExport:
    run, folder = Path(run_dir), Path(output)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"--output {folder} is a file; give a new or empty folder (nothing was overwritten)")
    if folder.exists() and any(folder.iterdir()):
        raise ExportError(f"{folder} exists and is not empty; choose a new --output (nothing was overwritten)")
    plan = check_export(run, folder / "model.gguf", type_, force=False)
    template, fmt = go_template(plan.tokenizer)  # refused before anything is written
    eos = plan.tokenizer.eos_token
    stops = list(dict.fromkeys(([eos] if eos else []) + list(fmt.stops)))
    text = modelfile(template, stops, run, fmt.name)
    folder.mkdir(parents=True, exist_ok=True)
    exported = write_gguf(plan, folder / "model.gguf")
    path = folder / "Modelfile"
    path.write_text(text, encoding="utf-8")
    model_name = name or run.resolve().name
    return OllamaExport(folder, exported.path, path, f"ollama create {model_name} -f {path}")
