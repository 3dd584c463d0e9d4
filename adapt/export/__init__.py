"""Run the adapted model locally: a run folder as one GGUF file for llama.cpp (`adapt export gguf`) and as an
Ollama model (`adapt export ollama`). Written on llama.cpp's own Python library `gguf`; checked against llama.cpp
itself (llama-cpp-python) in tests/test_export.py."""
