"""Old module paths of release 0.2 (``byol_wrap.augment``, ``byol_wrap.data``...), kept for one release.

In 0.3 the library moved into :mod:`byol_wrap.core` and the job into :mod:`byol_wrap.job`. Importing a module
by its old path returns the module at its new path (the same object, so patching one patches the other) and
warns once with a :class:`DeprecationWarning` naming the new path.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Dict, Optional, Sequence

CORE_MODULES = ("augment", "batchnorm", "byol", "checks", "ema", "heads", "hooks", "knn", "layers", "loss",
                "memory_format", "optim", "pooling", "probe", "rng", "wrappers", "_deprecation")
JOB_MODULES = ("checkpoint", "cli", "data", "encoder", "io", "models", "monitor", "train")
MOVED: Dict[str, str] = {
    **{f"byol_wrap.{name}": f"byol_wrap.core.{name}" for name in CORE_MODULES},
    **{f"byol_wrap.{name}": f"byol_wrap.job.{name}" for name in JOB_MODULES},
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}: import it from there (the old path goes in 0.4)",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module at its new path is already executed


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves the 0.2 module paths in :data:`MOVED` to their 0.3 modules."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Add the finder to ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
