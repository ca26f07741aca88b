"""Run tracking behind a small logger interface (MLflow, or nothing)."""

from medfm.tracking.base import Logger, NullLogger, make_logger

__all__ = ["Logger", "NullLogger", "make_logger"]
