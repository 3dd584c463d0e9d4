# `make demo` and `make test` set everything up on first use: a local virtualenv with the pinned stack.
VENV    ?= .venv
PYTHON  ?= python3
# The CPU wheel keeps a laptop/CI install small; on a GPU machine use e.g. TORCH="torch==2.13.0 --index-url ...cu130".
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed-stamp
# llama-cpp-python builds llama.cpp from source: portable CPU code, no multimodal library, no OpenMP/OpenSSL (about
# 3.5 minutes on 2 cores instead of 4.5; pip caches the wheel, so later installs take a second).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=OFF
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo demo-eval test test-fast docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(VENV)/bin/python -m pip install -q -e ".[dev]"
	# bubblewrap isolates the code tasks' model-written programs (eval/adapt_eval/sandbox.py); installed where we are root
	command -v bwrap >/dev/null || (test "$$(id -u)" = 0 && (apt-get install -y -qq bubblewrap || \
		(apt-get update -qq && apt-get install -y -qq bubblewrap)) >/dev/null 2>&1) || \
		echo "warning: bubblewrap is not installed: code tasks (HumanEval, MBPP) will refuse to run (see eval/README.md)"
	# Go renders the Ollama Modelfile TEMPLATEs in tests/test_ollama_templates.py (about 20 s to install on 2 cores)
	command -v go >/dev/null || (test "$$(id -u)" = 0 && (apt-get install -y -qq golang-go || \
		(apt-get update -qq && apt-get install -y -qq golang-go)) >/dev/null 2>&1) || \
		echo "warning: go is not installed: tests/test_ollama_templates.py skips rendering the Ollama templates"
	# nltk's punkt_tab data for IFEval, offline: the llama-index-core wheel bundles it (data only, no deps)
	$(VENV)/bin/python -m pip install -q --no-deps --target $(VENV)/adapt-nltk llama-index-core==0.14.25
	touch $(STAMP)

# The offline pipeline: base -> SFT -> DPO on a tiny OLMoE, report in runs/demo/report.md (replaces runs/demo).
demo: $(STAMP)
	$(OFFLINE) $(VENV)/bin/adapt demo --output runs/demo --overwrite

# The demo's base, SFT and DPO models on the olmoe-paper suite (5 items per benchmark), then the report.
# DATA=folder: the benchmarks' local files (the public releases' layout); without it, the Hub's datasets.
DATA ?= $(ADAPT_DATA)
demo-eval: $(STAMP)
	for m in base sft dpo; do $(OFFLINE) $(VENV)/bin/adapt eval --model runs/demo/$$m --limit 5 \
		$(if $(DATA),--data-dir $(DATA)) || exit 1; done
	$(VENV)/bin/adapt report runs/demo/base/eval/olmoe-paper runs/demo/sft/eval/olmoe-paper \
		runs/demo/dpo/eval/olmoe-paper --names base,sft,dpo --output runs/demo/eval-report

# The linter (configured in pyproject.toml), then the whole suite, slow tests included (the demo's learning checks).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(OFFLINE) $(VENV)/bin/python -m pytest --durations=30

test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(OFFLINE) $(VENV)/bin/python -m pytest -m "not slow and not multiprocess"

# The recipe reference, written from the config classes (tests/test_reference.py fails while it is stale).
docs: $(STAMP)
	$(VENV)/bin/python -m adapt.config.reference > docs/recipe-reference.md.new  # a failure keeps the old file
	mv docs/recipe-reference.md.new docs/recipe-reference.md

clean:
	rm -rf $(VENV) runs *.egg-info
