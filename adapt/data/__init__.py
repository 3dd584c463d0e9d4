"""Training data: sources, tokenizers and chat templates."""
