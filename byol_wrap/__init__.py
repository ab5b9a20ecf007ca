"""byol-wrap: BYOL self-supervised pretraining for any PyTorch image backbone.

Example:
    >>> import torch, torchvision
    >>> from byol_wrap import BYOL
    >>> learner = BYOL(torchvision.models.resnet18(), image_size=32, hidden_layer="avgpool")
    >>> loss = learner(torch.rand(4, 3, 32, 32))

The building blocks live in their modules (``byol_wrap.augment``, ``byol_wrap.hooks``,
``byol_wrap.pooling``, ``byol_wrap.heads``, ``byol_wrap.loss``, ``byol_wrap.ema``,
``byol_wrap.optim``, ``byol_wrap.knn``, ...); the names below are what a training script calls.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Dict, List, Tuple

from .augment import byol_augmentation, default_augmentations
from .byol import BYOL
from .layers import list_layers, print_layers
from .optim import byol_param_groups, paper_optimizer_and_scheduler
from .wrappers import ddp_params_to_ignore, unwrap

__version__ = "0.2.0"

__all__ = [
    "BYOL",
    "byol_augmentation",
    "byol_param_groups",
    "ddp_params_to_ignore",
    "default_augmentations",
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
    "pretrain": ("byol_wrap.train", "pretrain"),
    "load_encoder": ("byol_wrap.encoder", "load_encoder"),
    "get_rng_state": ("byol_wrap.rng", "get_rng_state"),
    "set_rng_state": ("byol_wrap.rng", "set_rng_state"),
    "NonFiniteError": ("byol_wrap.checks", "NonFiniteError"),
    # building blocks that used to be exported here; import them from their modules
    "MLP": ("byol_wrap.heads", "MLP"),
    "IMAGENET_MEAN": ("byol_wrap.augment", "IMAGENET_MEAN"),
    "IMAGENET_STD": ("byol_wrap.augment", "IMAGENET_STD"),
    "blur_kernel_size": ("byol_wrap.augment", "blur_kernel_size"),
    "RepresentationExtractor": ("byol_wrap.hooks", "RepresentationExtractor"),
    "resolve_layer": ("byol_wrap.hooks", "resolve_layer"),
    "pool": ("byol_wrap.pooling", "pool"),
    "format_layers": ("byol_wrap.layers", "format_layers"),
    "byol_loss": ("byol_wrap.loss", "byol_loss"),
    "symmetric_byol_loss": ("byol_wrap.loss", "symmetric_byol_loss"),
    "cosine_tau": ("byol_wrap.ema", "cosine_tau"),
    "ema_update_": ("byol_wrap.ema", "ema_update_"),
    "embed": ("byol_wrap.knn", "embed"),
    "knn_accuracy": ("byol_wrap.knn", "knn_accuracy"),
    "knn_predict": ("byol_wrap.knn", "knn_predict"),
    "lars_optimizer": ("byol_wrap.optim", "lars_optimizer"),
    "scaled_lr": ("byol_wrap.optim", "scaled_lr"),
    "warmup_cosine": ("byol_wrap.optim", "warmup_cosine"),
    "warmup_cosine_scheduler": ("byol_wrap.optim", "warmup_cosine_scheduler"),
}
# Old top-level names of renamed functions: old name -> (module, new name). They warn.
_RENAMED: Dict[str, Tuple[str, str]] = {
    "param_groups": ("byol_wrap.optim", "weight_decay_groups"),
    "paper_optimizer": ("byol_wrap.optim", "paper_optimizer_and_scheduler"),
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
