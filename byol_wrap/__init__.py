"""byol-wrap: BYOL self-supervised pretraining for any PyTorch image backbone.

Example:
    >>> import torch, torchvision
    >>> from byol_wrap import BYOL
    >>> learner = BYOL(torchvision.models.resnet18(), image_size=32, hidden_layer="avgpool")
    >>> loss = learner(torch.rand(4, 3, 32, 32))

Two layers: :mod:`byol_wrap.core` is the library (``BYOL`` and its building blocks, one concept a module:
``byol_wrap.core.augment``, ``.hooks``, ``.heads``, ``.loss``, ``.ema``, ...; torch, torchvision and kornia
only), :mod:`byol_wrap.job` the command and :func:`pretrain` built on it (``pip install "byol-wrap[train]"``).
The library never imports the job. The names below are what a training script calls.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Dict, List, Tuple

from . import _moved
from .core.augment import byol_augmentation, default_augmentations
from .core.byol import BYOL
from .core.layers import list_layers, print_layers
from .core.optim import byol_param_groups, paper_optimizer_and_scheduler
from .core.wrappers import ddp_params_to_ignore, unwrap

_moved.install()  # 0.2's module paths (byol_wrap.augment, byol_wrap.data, ...) still import, with a warning

__version__ = "0.3.0"

__all__ = [
    "BYOL",
    "byol_augmentation",
    "byol_param_groups",
    "ddp_params_to_ignore",
    "default_augmentations",
    "evaluate",
    "get_rng_state",
    "list_layers",
    "load_encoder",
    "paper_optimizer_and_scheduler",
    "pretrain",
    "print_layers",
    "set_rng_state",
    "unwrap",
    "__version__",
]

# Names importable from the top level without being part of ``__all__``: (module, attribute).
# The job layer (pretrain, load_encoder) and rng are imported on first access only.
_LAZY: Dict[str, Tuple[str, str]] = {
    "pretrain": ("byol_wrap.job.train", "pretrain"),
    "load_encoder": ("byol_wrap.job.encoder", "load_encoder"),
    "evaluate": ("byol_wrap.job.evaluate", "evaluate"),
    "get_rng_state": ("byol_wrap.core.rng", "get_rng_state"),
    "set_rng_state": ("byol_wrap.core.rng", "set_rng_state"),
    "NonFiniteError": ("byol_wrap.core.checks", "NonFiniteError"),
    # building blocks that used to be exported here; import them from their modules
    "MLP": ("byol_wrap.core.heads", "MLP"),
    "IMAGENET_MEAN": ("byol_wrap.core.augment", "IMAGENET_MEAN"),
    "IMAGENET_STD": ("byol_wrap.core.augment", "IMAGENET_STD"),
    "blur_kernel_size": ("byol_wrap.core.augment", "blur_kernel_size"),
    "RepresentationExtractor": ("byol_wrap.core.hooks", "RepresentationExtractor"),
    "resolve_layer": ("byol_wrap.core.hooks", "resolve_layer"),
    "pool": ("byol_wrap.core.pooling", "pool"),
    "format_layers": ("byol_wrap.core.layers", "format_layers"),
    "byol_loss": ("byol_wrap.core.loss", "byol_loss"),
    "symmetric_byol_loss": ("byol_wrap.core.loss", "symmetric_byol_loss"),
    "cosine_tau": ("byol_wrap.core.ema", "cosine_tau"),
    "ema_update_": ("byol_wrap.core.ema", "ema_update_"),
    "embed": ("byol_wrap.core.knn", "embed"),
    "knn_accuracy": ("byol_wrap.core.knn", "knn_accuracy"),
    "knn_predict": ("byol_wrap.core.knn", "knn_predict"),
    "lars_optimizer": ("byol_wrap.core.optim", "lars_optimizer"),
    "scaled_lr": ("byol_wrap.core.optim", "scaled_lr"),
    "warmup_cosine": ("byol_wrap.core.optim", "warmup_cosine"),
    "warmup_cosine_scheduler": ("byol_wrap.core.optim", "warmup_cosine_scheduler"),
}
# Old top-level names of renamed functions: old name -> (module, new name). They warn.
_RENAMED: Dict[str, Tuple[str, str]] = {
    "param_groups": ("byol_wrap.core.optim", "weight_decay_groups"),
    "paper_optimizer": ("byol_wrap.core.optim", "paper_optimizer_and_scheduler"),
}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        module, new = _RENAMED[name]
        warnings.warn(f"byol_wrap.{name} is deprecated; use {module}.{new} (same behaviour)",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new)
    if name in _LAZY:
        module, attribute = _LAZY[name]
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise  # the module exists but needs something missing (e.g. the training extras)
            raise AttributeError(f"byol_wrap.{name} needs {module}, which this version does not have") from error
        value = getattr(imported, attribute)
        globals()[name] = value  # later accesses skip __getattr__
        return value
    raise AttributeError(f"module 'byol_wrap' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
