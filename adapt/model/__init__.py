"""Models: loading from the Hub or a folder, or building from a config; the fused experts path."""

# Registers `adapt_fused` in transformers' ExpertsInterface, so `experts_implementation="adapt_fused"` resolves.
from adapt.model import fused_experts  # noqa: F401
