"""The built-in backbones: every module in this package is imported (and so registered) on the first lookup."""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
