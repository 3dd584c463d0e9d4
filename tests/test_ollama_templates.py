"""The Modelfile TEMPLATE of `adapt export ollama`, per chat format: Go's own text/template (what Ollama executes)
renders the export's Go template on plain conversations and writes, byte for byte, what the models' real Jinja
templates (tests/fixtures/chat_templates) write through transformers; a template with no Go twin is refused in one line
and nothing is written. tests/scripts/go_template/render.go executes a template as Ollama's template/template.go does
(its functions, such as GPT-OSS's `currentDate`, and its merging of consecutive messages of one role)."""

import json
import os
import shutil
import subprocess
from datetime import date

import pytest
import torch

from adapt.export.architectures import ExportError
from adapt.export.chat_formats import FORMATS, PROBES, generation_prompt, jinja_render, recognise
from adapt.export.ollama import export_ollama, go_template
from conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "chat_templates"
RENDER_GO = REPO / "tests" / "scripts" / "go_template" / "render.go"
DEMO = "<|endoftext|>"  # the demo tokenizer's BOS and EOS
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")

# fixture -> (the format it is, BOS, EOS): the tokens only need to be the strings the models' templates print
TEMPLATES = {
    "tulu": ("tulu", DEMO, DEMO),  # the toolkit's own, from adapt/data/templates
    "tulu+bos": ("tulu+bos", DEMO, DEMO),
    "teknium-OpenHermes-2.5-Mistral-7B": ("chatml", DEMO, "<|im_end|>"),
    "Qwen-Qwen2.5-7B-Instruct": ("qwen2.5", DEMO, "<|im_end|>"),
    "Qwen-Qwen3-0.6B": ("qwen3", DEMO, "<|im_end|>"),
    "mistralai-Mixtral-8x7B-Instruct-v0.1": ("mixtral", "<s>", "</s>"),
    "mistralai-Mistral-7B-Instruct-v0.2-v1": ("mistral-v1", "<s>", "</s>"),
    "deepseek-ai-DeepSeek-V3": ("deepseek-v3", *DEEPSEEK),
    "deepseek-ai-DeepSeek-V3.1": ("deepseek-v3.1", *DEEPSEEK),
    "ibm-granite-granite-3.0-8b-instruct": ("granite", DEMO, "<|end_of_text|>"),
    "ibm-granite-granite-4.1": ("granite", DEMO, "<|end_of_text|>"),
    "ibm-granite-granite-4.0": ("granite-4.0", DEMO, "<|end_of_text|>"),
    "ibm-granite-granite-3.3-2B-Instruct": ("granite-3.3", DEMO, "<|end_of_text|>"),
    "openai-gpt-oss-120b": ("gpt-oss", DEMO, "<|return|>"),
}
REFUSED = {f.name for f in FORMATS if f.go is None}


def tokenizer_for(fixture: str):
    from adapt.config.sections import ModelSection
    from adapt.data.tokenizer import load_tokenizer, tulu_template

    tokenizer = load_tokenizer(ModelSection(tokenizer="builtin:demo", chat_template="tulu"))
    _, tokenizer.bos_token, tokenizer.eos_token = TEMPLATES[fixture]
    tokenizer.chat_template = (tulu_template(fixture == "tulu+bos") if fixture.startswith("tulu")
                               else (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"))
    return tokenizer


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """render(template, conversations) -> [(text, error)], by tests/scripts/go_template/render.go, built once. Go's
    cache and module folders go to a temporary folder: nothing is written in the repository or the home folder."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (`make` installs golang-go where it runs as root): the Go templates are "
                    "not rendered")
    folder = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(folder / "cache"), "GOPATH": str(folder / "path"), "GOENV": "off",
           "GOFLAGS": "", "GOTOOLCHAIN": "local", "GOPROXY": "off"}  # a std-only build: no network, no go.mod
    binary = folder / "render"
    subprocess.run([go, "build", "-o", str(binary), str(RENDER_GO)], cwd=folder, env=env, check=True,
                   capture_output=True, timeout=600)

    def render(template: str, conversations: list[list[dict]]) -> list[tuple[str, str]]:
        cases = {"template": template, "cases": [{"messages": c} for c in conversations]}
        done = subprocess.run([str(binary)], input=json.dumps(cases), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [(r["text"], r["error"]) for r in json.loads(done.stdout)["renders"]]
    return render


def render_both(tokenizer, template, go_render, conversations, jinja_conversations=None):
    """The Jinja's prompts (of `jinja_conversations`, or the same conversations) and the Go twin's, rendered on one
    day: GPT-OSS prints today's date (Jinja: strftime_now, Go: currentDate), so renders that straddle midnight are
    done again, once."""
    for _ in range(2):
        day = date.today()
        written = [jinja_render(tokenizer, messages) for messages in jinja_conversations or conversations]
        rendered = go_render(template, conversations)
        if date.today() == day:
            break
    return written, rendered


def collated(messages):
    """Ollama's collate: consecutive messages of one role merged into one, their contents joined by a blank line."""
    merged = []
    for m in messages:
        if merged and merged[-1]["role"] == m["role"]:
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + m["content"]}
        else:
            merged.append(dict(m))
    return merged


TWINS = [f for f, (fmt, _, _) in TEMPLATES.items() if fmt not in REFUSED]


@pytest.mark.parametrize("fixture", TWINS)
def test_the_go_template_writes_what_the_jinja_writes(fixture, go_render):
    tokenizer = tokenizer_for(fixture)
    template, fmt = go_template(tokenizer)
    assert fmt.name == TEMPLATES[fixture][0]
    written, rendered = render_both(tokenizer, template, go_render, PROBES)
    assert sum(w is not None for w in written) >= 6
    for messages, jinja, (go, error) in zip(PROBES, written, rendered, strict=True):
        if jinja is None:  # the Jinja refuses it (Mixtral: a system message); so does the Go twin, with the reason
            assert "refuses this conversation" in error, (messages, go)
        else:
            assert (go, error) == (jinja, ""), (messages, generation_prompt(messages))


@pytest.mark.parametrize("fixture", TWINS)
def test_ollama_merges_consecutive_messages_of_one_role_before_the_template(fixture, go_render):
    """Two user messages in a row reach the TEMPLATE as one (Ollama's collate): the Go twin, given them apart, writes
    what the Jinja writes for the merged conversation, not for the one given."""
    tokenizer = tokenizer_for(fixture)
    template, _ = go_template(tokenizer)
    apart = [[{"role": "user", "content": "First."}, {"role": "user", "content": "Second."}],
             [*PROBES[-1][:3], {"role": "user", "content": "Again:"}, {"role": "user", "content": " why? "}]]
    written, rendered = render_both(tokenizer, template, go_render, apart, [collated(m) for m in apart])
    for messages, jinja, (go, error) in zip(apart, written, rendered, strict=True):
        if jinja is None:  # Mixtral refuses the system message, merged or not
            assert "refuses this conversation" in error, (messages, go)
        else:
            assert (go, error) == (jinja, ""), messages
            assert go != jinja_render(tokenizer, messages)  # the Jinja given them apart writes two user turns
    assert written[0] is not None


def test_a_template_that_prints_the_date_in_another_format_is_refused_in_one_line():
    """Granite 3.3 prints "December 07, 2026"; Ollama's currentDate prints 2026-12-07 whatever it is asked."""
    tokenizer = tokenizer_for("ibm-granite-granite-3.3-2B-Instruct")
    assert recognise(tokenizer).name == "granite-3.3"
    with pytest.raises(ExportError, match=r"today's date .*%B %d, %Y.*currentDate, prints YYYY-MM-DD.* write the "
                                          "Modelfile's TEMPLATE by hand") as refused:
        go_template(tokenizer)
    assert "\n" not in str(refused.value)


def test_a_template_that_writes_another_prompt_is_refused():
    """ChatML that trims the contents: a string comparison could call it ChatML; the probes (spaces at the ends of a
    message) do not."""
    tokenizer = tokenizer_for("teknium-OpenHermes-2.5-Mistral-7B")
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    with pytest.raises(ExportError, match="not one the toolkit ships a Go TEMPLATE for.*by hand") as refused:
        go_template(tokenizer)
    assert "\n" not in str(refused.value)


def save_run(folder, tokenizer):
    """A saved tiny OLMoE with this tokenizer (vocabulary 320 > the demo tokenizer's 299 tokens)."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=320, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_experts=2, num_experts_per_tok=1, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    OlmoeForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_modelfile_holds_the_template_and_a_refused_run_writes_nothing(tmp_path):
    tokenizer = tokenizer_for("Qwen-Qwen3-0.6B")
    tokenizer.eos_token = DEMO  # the GGUF's EOS must be a token of the vocabulary
    run = save_run(tmp_path / "qwen3", tokenizer)
    exported = export_ollama(run, tmp_path / "ollama")
    text = exported.modelfile.read_text(encoding="utf-8")
    template, fmt = go_template(tokenizer)
    assert fmt.name == "qwen3"
    assert f'TEMPLATE """{template}"""\n' in text  # the template Go renders as the Jinja does (the test above)
    assert text.endswith(f'PARAMETER stop "{DEMO}"\nPARAMETER stop "<|im_end|>"\n')

    tokenizer.chat_template = (FIXTURES / "ibm-granite-granite-3.3-2B-Instruct.jinja").read_text(encoding="utf-8")
    tokenizer.save_pretrained(run)  # the same run, now with Granite 3.3's template
    with pytest.raises(ExportError, match="granite-3.3.*today's date"):
        export_ollama(run, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
