"""forgetlab: controlled experiments on forgetting in small GPT-style language models."""

__version__ = "0.1.0"
