"""adapt: post-training (SFT, then DPO) for Mixture-of-Experts language models, with the router losses kept on."""

import os

__version__ = "0.1.0"

# Every entry point (the `adapt` command, `accelerate launch -m adapt.stages.sft`, the Python API) imports this
# package first, so the Hugging Face libraries' telemetry is switched off here, once; a user's own setting wins.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
