"""Where orderlab keeps what it can recompute (real-image feature caches): never beside the inputs.

Inputs are read-only: only ``prepare`` writes a dataset folder and only ``fit`` a checkpoint's folder. Caches go to
``$ORDERLAB_CACHE`` if set, else ``$XDG_CACHE_HOME/orderlab``, else ``~/.cache/orderlab`` (the XDG rule: an empty or
relative ``XDG_CACHE_HOME`` is ignored). Commands that cache take ``--cache_dir`` to override it.
"""

from __future__ import annotations

import os

__all__ = ["default_cache_dir"]


def default_cache_dir() -> str:
    """The cache folder (not created here; the first cache write creates it)."""
    if os.environ.get("ORDERLAB_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["ORDERLAB_CACHE"]))
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "orderlab")
