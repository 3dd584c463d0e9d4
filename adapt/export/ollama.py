"""`adapt export ollama RUN_DIR --output DIR`: the run as an Ollama model: `model.gguf` (adapt.export.gguf_file) and a
`Modelfile` whose TEMPLATE writes the prompt the run's chat template writes and whose stop is the run's EOS.

Ollama's TEMPLATE is a Go template; a Jinja chat template cannot be translated in general, so each chat template the
toolkit ships has its Go twin here, and a run whose template is another one is refused (its GGUF still carries the
Jinja template as `tokenizer.chat_template`). The twin of `tulu`, per message, as the Jinja renders it:
system `<|system|>\\n{content}\\n`; user `<|user|>\\n{content}\\n`; assistant `<|assistant|>\\n{content}{eos}` and
`\\n` unless it is the last message; after a last message that is not the assistant's, `<|assistant|>\\n` (the
generation prompt); `{bos}` first when the run's template starts with the BOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapt.export.architectures import ExportError
from adapt.export.gguf_vocab import chat_template, without_generation_tags

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


@dataclass
class OllamaExport:
    folder: Path
    gguf: Path
    modelfile: Path
    command: str


def go_template(tokenizer) -> str:
    """The Go twin of the run's chat template, or an ExportError naming what is known."""
    from adapt.data.tokenizer import tulu_template

    template = chat_template(tokenizer)
    if template is None:
        raise ExportError("the run's tokenizer has no chat template; Ollama needs one to format conversations")
    for add_bos in (False, True):
        if template == without_generation_tags(tulu_template(add_bos)):
            bos = tokenizer.bos_token if add_bos else ""
            return bos + TULU_GO.replace("@EOS@", tokenizer.eos_token)
    raise ExportError("the run's chat template is not one the toolkit ships (tulu); Ollama's TEMPLATE is a Go "
                      "template with no general translation from Jinja. Export the GGUF (it carries the Jinja "
                      "template) and write the Modelfile's TEMPLATE by hand")


def modelfile(template: str, eos: str, run: Path) -> str:
    if '"""' in template:
        raise ExportError('the chat template contains """, which a Modelfile cannot quote')
    return (f"# Written by `adapt export ollama` from the run folder {run}.\n"
            "FROM ./model.gguf\n"
            f'TEMPLATE """{template}"""\n'
            f'PARAMETER stop "{eos}"\n')


def export_ollama(run_dir: str | Path, output: str | Path, type_: str = "auto",
                  name: str | None = None) -> OllamaExport:
    from adapt.export.gguf_file import check_export, write_gguf

    run, folder = Path(run_dir), Path(output)
    if folder.exists() and any(folder.iterdir()):
        raise ExportError(f"{folder} exists and is not empty; choose a new --output (nothing was overwritten)")
    plan = check_export(run, folder / "model.gguf", type_, force=False)
    text = modelfile(go_template(plan.tokenizer), plan.tokenizer.eos_token, run)  # refused before writing
    folder.mkdir(parents=True, exist_ok=True)
    exported = write_gguf(plan, folder / "model.gguf")
    path = folder / "Modelfile"
    path.write_text(text, encoding="utf-8")
    model_name = name or run.resolve().name
    return OllamaExport(folder, exported.path, path, f"ollama create {model_name} -f {path}")
