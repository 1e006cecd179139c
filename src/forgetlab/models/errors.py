"""Errors raised when a model cannot be read from, or written to, a checkpoint format."""

from forgetlab.config.errors import ForgetlabError


class ModelLoadError(ForgetlabError, ValueError):
    """A path that is not a checkpoint forgetlab can read, or a checkpoint that does not fit."""


class ModelExportError(ForgetlabError, ValueError):
    """A model whose parts the target format (e.g. Hugging Face GPT-2) cannot express."""
