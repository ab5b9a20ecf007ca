"""The paper's optimisation recipe: LARS, no decay/adaptation for biases and norms, warmup + cosine.

Grill et al. (2020), section 3.3 and appendix C: LARS with a base learning rate of
``0.2 * batch_size / 256``, global weight decay ``1.5e-6``, biases and batch-normalisation
parameters excluded from both weight decay and the LARS adaptation, a linear warmup
(10 of 1000 epochs) followed by a cosine decay to zero, and the target decay
``tau`` on a cosine schedule over the same steps (``BYOL(total_steps=...)``).

LARS is timm's implementation (``timm.optim.Lars``), imported only when asked for.

Example:
    >>> learner = BYOL(net, image_size=224, hidden_layer="avgpool", total_steps=10_000)  # doctest: +SKIP
    >>> optimizer, scheduler = paper_optimizer_and_scheduler(  # doctest: +SKIP
    ...     learner, batch_size=4096, total_steps=10_000)
    >>> for images in loader:                                                  # doctest: +SKIP
    ...     loss = learner(images); optimizer.zero_grad(); loss.backward()
    ...     optimizer.step(); scheduler.step(); learner.update_moving_average()
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ._deprecation import deprecated_alias
from .wrappers import unwrap

# Every torch normalisation layer with affine parameters: BatchNorm*, SyncBatchNorm,
# InstanceNorm* (all _NormBase), LayerNorm, GroupNorm, RMSNorm.
NORM_LAYERS: Tuple[type, ...] = tuple(
    cls
    for cls in (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        getattr(nn, "RMSNorm", None),
    )
    if cls is not None
)

PAPER_BASE_LR = 0.2
PAPER_WEIGHT_DECAY = 1.5e-6


def scaled_lr(batch_size: int, base_lr: float = PAPER_BASE_LR) -> float:
    """The paper's linear scaling rule ``base_lr * batch_size / 256``.

    ``batch_size`` is the global batch: per-process batch times the number of processes.

    Example:
        >>> scaled_lr(4096)
        3.2
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int (the global batch), got {batch_size!r}")
    return base_lr * batch_size / 256


def weight_decay_groups(module: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two optimizer parameter groups: with weight decay, and without it.

    Biases, every parameter of a normalisation layer (:data:`NORM_LAYERS`) and any other
    parameter with fewer than two dimensions go into the second group, with
    ``weight_decay=0``; parameters that do not require gradients (the BYOL target network)
    are left out. Both groups carry ``always_adapt`` for :func:`lars_optimizer` (LARS
    adapts the first group only); other optimizers ignore that key.

    Example:
        >>> decay, no_decay = weight_decay_groups(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), 1e-4)
        >>> [tuple(p.shape) for p in decay["params"]], len(no_decay["params"])
        ([(4, 4)], 3)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    seen = set()
    for _, submodule in module.named_modules():
        is_norm = isinstance(submodule, NORM_LAYERS)
        for name, param in submodule.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if is_norm or name.endswith("bias") or param.ndim < 2:
                no_decay.append(param)
            else:
                decay.append(param)
    return [
        {"params": decay, "weight_decay": float(weight_decay), "always_adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "always_adapt": False},
    ]


PREDICTOR_LR_SCALE = 10.0


def byol_param_groups(
    learner: nn.Module,
    lr: float,
    predictor_lr_scale: float = PREDICTOR_LR_SCALE,
    weight_decay: float = 0.0,
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups for a BYOL learner with a faster predictor.

    The predictor gets ``lr * predictor_lr_scale``, everything else trainable (encoder,
    projector) gets ``lr``; within each, biases and normalisation parameters get no weight
    decay (as in :func:`weight_decay_groups`). The target network is left out. A predictor that
    learns faster than the encoder stays closer to its optimum, which is what keeps BYOL
    from collapsing (Grill et al. 2020, section 3.2, and the paper's ablation that raises the
    predictor's learning rate); on short CPU runs it learned better representations
    (BENCHMARKS.md). ``predictor_lr_scale=1`` is the paper's single learning rate.

    Pass the groups to any optimizer; schedulers scale each group's rate alike.

    Args:
        learner: a ``BYOL`` learner, or a wrapper of one (DDP, ``torch.compile``, ...).
        lr: the base learning rate (encoder and projector).
        predictor_lr_scale: multiplier of ``lr`` for the predictor, > 0.
        weight_decay: for weights (not biases or norm parameters).

    Raises:
        TypeError: if ``learner`` holds no ``BYOL`` learner.
        ValueError: if ``lr`` or ``predictor_lr_scale`` is not positive.

    Example:
        >>> from byol_wrap import BYOL
        >>> learner = BYOL(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        ...                image_size=8, hidden_layer=-1, projection_hidden_size=16, projection_size=8)
        >>> opt = torch.optim.Adam(byol_param_groups(learner, lr=3e-4))
        >>> sorted({round(group["lr"], 6) for group in opt.param_groups})
        [0.0003, 0.003]
    """
    byol = unwrap(learner)  # raises TypeError for a module that holds no BYOL learner
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if predictor_lr_scale <= 0:
        raise ValueError(f"predictor_lr_scale must be positive, got {predictor_lr_scale}")
    predictor_ids = {id(p) for p in byol.predictor.parameters()}
    groups: List[Dict[str, Any]] = []
    for group in weight_decay_groups(byol, weight_decay):
        rest = [p for p in group["params"] if id(p) not in predictor_ids]
        head = [p for p in group["params"] if id(p) in predictor_ids]
        groups.append({**group, "params": rest, "lr": float(lr)})
        groups.append({**group, "params": head, "lr": float(lr) * predictor_lr_scale})
    return [group for group in groups if group["params"]]


def lars_optimizer(
    module: nn.Module,
    lr: float,
    weight_decay: float = PAPER_WEIGHT_DECAY,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """timm's LARS over :func:`weight_decay_groups`: biases and norm parameters get neither
    weight decay nor the trust-ratio adaptation.

    Args:
        module: the learner (or any module); frozen parameters are skipped.
        lr: the peak learning rate, e.g. :func:`scaled_lr` of the global batch.
        weight_decay, momentum, trust_coefficient: as in the paper by default.
        **kwargs: passed to ``timm.optim.Lars`` (``eps``, ``trust_clip``, ``nesterov``, ...).

    Raises:
        ImportError: if timm is not installed.

    Example:
        >>> opt = lars_optimizer(learner, lr=scaled_lr(512))  # doctest: +SKIP
    """
    try:
        from timm.optim import Lars
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lars_optimizer uses timm's LARS implementation: pip install timm (or byol-wrap[examples]), "
            "or build your own optimizer over byol_wrap.core.optim.weight_decay_groups(learner, weight_decay)"
        ) from error
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return Lars(
        weight_decay_groups(module, weight_decay),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        trust_coeff=trust_coefficient,
        **kwargs,
    )


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, final_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then cosine decay.

    ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (so the first step
    does not have a zero rate and the last warmup step reaches 1), then
    ``final_ratio + (1 - final_ratio) (1 + cos(pi (step - warmup) / (total - warmup))) / 2``,
    and ``final_ratio`` from ``total_steps`` on.

    Example:
        >>> [round(warmup_cosine(k, 10, 2), 3) for k in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= 0:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an int in [0, total_steps={total_steps}], got {warmup_steps!r}")
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio must lie in [0, 1], got {final_ratio}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return final_ratio
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, final_ratio: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_cosine`; call ``scheduler.step()`` once per optimizer step.

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = warmup_cosine_scheduler(opt, total_steps=10, warmup_steps=2)
        >>> opt.param_groups[0]["lr"]
        0.5
    """
    warmup_cosine(0, total_steps, warmup_steps, final_ratio)  # validate the arguments now
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, final_ratio))


def paper_optimizer_and_scheduler(
    learner: nn.Module,
    batch_size: int,
    total_steps: int,
    warmup_steps: Optional[int] = None,
    base_lr: float = PAPER_BASE_LR,
    weight_decay: float = PAPER_WEIGHT_DECAY,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    final_ratio: float = 0.0,
) -> Tuple[torch.optim.Optimizer, LambdaLR]:
    """The paper's LARS optimizer and learning-rate schedule for ``learner``.

    Args:
        learner: a ``BYOL`` learner, or a wrapper of one (DDP, ``torch.compile``, ...).
            Its ``total_steps`` must equal ``total_steps`` so that the tau schedule and the
            learning-rate schedule count the same optimizer steps.
        batch_size: the global batch (per process times processes) for :func:`scaled_lr`.
        total_steps: number of optimizer steps of the run.
        warmup_steps: linear warmup length; ``None``: 1% of ``total_steps`` (10 of the
            paper's 1000 epochs).
        base_lr, weight_decay, momentum, trust_coefficient, final_ratio: see
            :func:`scaled_lr`, :func:`lars_optimizer`, :func:`warmup_cosine`.

    Returns:
        ``(optimizer, scheduler)``: call ``optimizer.step()``, ``scheduler.step()`` and
        ``learner.update_moving_average()`` once per step.

    Example:
        >>> learner = BYOL(net, image_size=224, total_steps=1000)                 # doctest: +SKIP
        >>> optimizer, scheduler = paper_optimizer_and_scheduler(  # doctest: +SKIP
        ...     learner, batch_size=256, total_steps=1000)
    """
    byol = unwrap(learner)
    if byol.use_momentum and byol.total_steps != total_steps:
        raise ValueError(
            f"the learner's tau schedule counts total_steps={byol.total_steps} but the learning-rate schedule "
            f"{total_steps}: construct BYOL(..., total_steps={total_steps}) so both follow the same steps"
        )
    if warmup_steps is None:
        warmup_steps = total_steps // 100
    optimizer = lars_optimizer(
        byol, scaled_lr(batch_size, base_lr), weight_decay, momentum=momentum, trust_coefficient=trust_coefficient
    )
    return optimizer, warmup_cosine_scheduler(optimizer, total_steps, warmup_steps, final_ratio)


param_groups = deprecated_alias(weight_decay_groups, "param_groups")
paper_optimizer = deprecated_alias(paper_optimizer_and_scheduler, "paper_optimizer")
