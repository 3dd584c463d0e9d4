"""adapt: post-training (SFT, then DPO) for Mixture-of-Experts language models, with the router losses kept on."""

__version__ = "0.1.0"
