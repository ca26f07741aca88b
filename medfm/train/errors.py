"""Errors of training, importable without torch (the CLI catches them before loading it)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""
