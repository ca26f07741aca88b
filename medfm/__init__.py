"""medfm: medical imaging foundation models.

``import medfm`` gives the functions notebooks need (:mod:`medfm.api`): :func:`ingest`,
:func:`load_config`, :func:`pretrain`, :func:`evaluate`, :func:`audit` and :func:`load_encoder`.
They load lazily, so ``import medfm`` (and ``medfm --help``) imports no torch.
"""

__version__ = "0.1.0"

API = ("audit", "evaluate", "ingest", "load_config", "load_encoder", "pretrain")
__all__ = [*API, "__version__"]


def __getattr__(name: str):
    """PEP 562: the functions of :mod:`medfm.api`, imported on first use."""
    if name in API:
        from medfm import api

        return getattr(api, name)
    raise AttributeError(f"module 'medfm' has no attribute {name!r}")
