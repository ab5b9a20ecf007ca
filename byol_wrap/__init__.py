"""byol-wrap: BYOL self-supervised pretraining for any PyTorch image backbone.

Example:
    >>> import torch, torchvision
    >>> from byol_wrap import BYOL
    >>> learner = BYOL(torchvision.models.resnet18(), image_size=32, hidden_layer="avgpool")
    >>> loss = learner(torch.rand(4, 3, 32, 32))
"""
from .augment import IMAGENET_MEAN, IMAGENET_STD, blur_kernel_size, byol_augmentation, default_augmentations
from .byol import BYOL
from .ema import cosine_tau, ema_update_
from .heads import MLP
from .knn import embed, knn_accuracy, knn_predict
from .hooks import RepresentationExtractor, format_layers, list_layers, pool, print_layers, resolve_layer
from .loss import byol_loss, symmetric_byol_loss
from .optim import byol_param_groups, lars_optimizer, paper_optimizer, param_groups, scaled_lr, warmup_cosine, warmup_cosine_scheduler
from .parallel import ddp_params_to_ignore, unwrap
from .rng import get_rng_state, set_rng_state

__version__ = "0.1.0"

__all__ = [
    "BYOL",
    "MLP",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RepresentationExtractor",
    "blur_kernel_size",
    "byol_augmentation",
    "byol_loss",
    "cosine_tau",
    "default_augmentations",
    "ema_update_",
    "embed",
    "format_layers",
    "get_rng_state",
    "knn_accuracy",
    "knn_predict",
    "list_layers",
    "pool",
    "print_layers",
    "resolve_layer",
    "set_rng_state",
    "symmetric_byol_loss",
    # scaling out (parallel.py) and the paper's optimisation recipe (optim.py)
    "byol_param_groups",
    "ddp_params_to_ignore",
    "lars_optimizer",
    "paper_optimizer",
    "param_groups",
    "scaled_lr",
    "unwrap",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
