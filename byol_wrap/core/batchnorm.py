"""Per-view BatchNorm statistics with the views stacked in one batch.

BYOL's paper runs each augmented view through the networks on its own, so every
BatchNorm layer normalises a view with that view's statistics. Running both views as
one batch of ``2N`` is faster (one call per layer instead of two, larger matrix
products), but then BatchNorm mixes the views. :func:`per_view_batchnorm` gives both:
inside it, every BatchNorm layer (any subclass of ``torch.nn.modules.batchnorm._BatchNorm``:
``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, timm's ``BatchNormAct2d``, your own) that uses
batch statistics splits its input into ``num_views`` equal chunks along dim 0, runs its
own ``forward`` on each chunk in order, and concatenates the results. Every other layer
sees the whole batch.

The result is the same as one pass per view, to float rounding: the same outputs and
gradients, and the same running statistics (each layer updates them once per view, in
the views' order, exactly as separate passes do; ``SyncBatchNorm`` synchronises per view).
Only ``_BatchNorm`` subclasses are split: a home-made layer that computes batch statistics
some other way would see all views at once.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, List, Literal, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["per_view_batchnorm", "batchnorm_layers", "uses_batch_statistics", "resolve_view_batching"]

#: ``BYOL(view_batching=...)``: ``"auto"``, ``"one_pass"``, ``"per_view"`` or ``"concat"``.
ViewBatching = Literal["auto", "one_pass", "per_view", "concat"]
VIEW_BATCHINGS = ("auto", "one_pass", "per_view", "concat")

_MISSING = object()


def uses_batch_statistics(module: _BatchNorm) -> bool:
    """Whether ``module``'s next forward normalises with the batch's own statistics.

    True in training mode, and in eval mode for layers without running statistics
    (``track_running_stats=False``), following ``_BatchNorm.forward``.

    Example:
        >>> uses_batch_statistics(nn.BatchNorm1d(4).eval())
        False
    """
    return module.training or (module.running_mean is None and module.running_var is None)


def batchnorm_layers(*modules: nn.Module) -> List[_BatchNorm]:
    """Every distinct ``_BatchNorm`` instance inside ``modules`` (shared layers once), in module order.

    Example:
        >>> len(batchnorm_layers(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))))
        1
    """
    seen = set()
    layers: List[_BatchNorm] = []
    for root in modules:
        for module in root.modules():
            if isinstance(module, _BatchNorm) and id(module) not in seen:
                seen.add(id(module))
                layers.append(module)
    return layers


def _split_forward(module: _BatchNorm, original: Callable[..., Any], num_views: int) -> Callable[..., Any]:
    def forward(x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if not uses_batch_statistics(module):
            return original(x, *args, **kwargs)
        if x.shape[0] % num_views:
            raise ValueError(
                f"per-view BatchNorm: {type(module).__name__} got a batch of {x.shape[0]}, which does not split "
                f"into {num_views} views of equal size"
            )
        return torch.cat([original(chunk, *args, **kwargs) for chunk in x.chunk(num_views)])

    return forward


@contextlib.contextmanager
def per_view_batchnorm(*modules: nn.Module, num_views: int = 2) -> Iterator[List[_BatchNorm]]:
    """Inside the block, BatchNorm layers in ``modules`` normalise each view with its own statistics.

    The views are the ``num_views`` equal consecutive chunks of the batch (dim 0), as
    ``torch.cat((view1, view2))`` stacks them. Layers in eval mode with running
    statistics are not affected (their output does not depend on the batch). On exit,
    also after an exception, every layer is exactly as before (no attribute is left
    behind); modules without BatchNorm are never touched.

    Args:
        modules: the networks (searched recursively; a layer shared by several is
            handled once).
        num_views: number of views stacked along the batch dimension.

    Yields:
        The list of BatchNorm layers that were switched (empty if none).

    Raises:
        ValueError: for ``num_views`` < 1, and (from a layer's forward) for a batch that
            does not split into ``num_views`` equal chunks.

    Example:
        >>> bn = nn.BatchNorm1d(3)
        >>> view1, view2 = torch.randn(4, 3), torch.randn(4, 3) + 5
        >>> with per_view_batchnorm(bn):
        ...     both = bn(torch.cat((view1, view2)))
        >>> torch.allclose(both[4:], nn.BatchNorm1d(3)(view2), atol=1e-6)
        True
    """
    if not isinstance(num_views, int) or isinstance(num_views, bool) or num_views < 1:
        raise ValueError(f"num_views must be a positive int, got {num_views!r}")
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"per_view_batchnorm takes torch.nn.Module instances, got {type(module).__name__}")
    layers = batchnorm_layers(*modules) if num_views > 1 else []
    patched: List[Tuple[_BatchNorm, Any]] = []
    try:
        for layer in layers:
            # an instance-level forward (someone else's patch) is kept and wrapped, then put back
            previous = layer.__dict__.get("forward", _MISSING)
            original = layer.forward
            patched.append((layer, previous))
            layer.forward = _split_forward(layer, original, num_views)  # type: ignore[method-assign]
        yield layers
    finally:
        for layer, previous in reversed(patched):
            if previous is _MISSING:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = previous


def inside_batchnorm(net: nn.Module, name: Optional[str]) -> Optional[str]:
    """The name of a BatchNorm layer of ``net`` that strictly contains the submodule ``name``, else None.

    A layer inside a BatchNorm module (e.g. the ``act`` of timm's ``BatchNormAct2d``)
    runs once per view under :func:`per_view_batchnorm`, so its output is not the
    whole batch's.

    Example:
        >>> inside_batchnorm(nn.Sequential(nn.BatchNorm1d(2)), "0") is None
        True
    """
    if not name:
        return None
    parts = name.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if isinstance(net.get_submodule(prefix), _BatchNorm):
            return prefix
    return None


#: ``view_batching="auto"`` runs the views in one pass up to this many pixels per view (48 x 48): on a CPU one
#: pass was faster at 32 px, within noise at 64 px and slower at 96 px (BENCHMARKS.md), so the cut-off lies between.
ONE_PASS_MAX_PIXELS = 48 * 48


def resolve_view_batching(view_batching: str, concat_views: Optional[bool], net: nn.Module,
                          hidden_layer: Optional[str], input_shape: Optional[Tuple[int, ...]] = None) -> str:
    """``"one_pass"``, ``"per_view"`` or ``"concat"``: BYOL's ``view_batching`` (and deprecated ``concat_views``).

    ``"auto"`` is ``"one_pass"`` for inputs of at most :data:`ONE_PASS_MAX_PIXELS` per
    channel (``input_shape`` is ``(C, ...)``; unknown counts as small), else ``"per_view"``;
    both compute the same thing, so the choice is about speed only. A ``hidden_layer``
    (resolved dotted name) inside a BatchNorm module, which one-pass mode runs once per
    view, always gives ``"per_view"``.

    Raises:
        ValueError: for an unknown value, ``"one_pass"`` with such a hidden layer, or
            ``concat_views=True`` together with another ``view_batching``.

    Example:
        >>> resolve_view_batching("auto", None, nn.Sequential(nn.Linear(2, 2)), None)
        'one_pass'
    """
    if view_batching not in VIEW_BATCHINGS:
        raise ValueError(f"view_batching must be one of {', '.join(map(repr, VIEW_BATCHINGS))}, got {view_batching!r}")
    if concat_views is not None:
        warnings.warn('BYOL(concat_views=...) is deprecated; use view_batching="concat" for True, or leave '
                      'view_batching at "auto" for False', DeprecationWarning, stacklevel=4)
        if concat_views and view_batching not in ("auto", "concat"):
            raise ValueError(f"concat_views=True contradicts view_batching={view_batching!r}; pass only view_batching")
        if concat_views:
            return "concat"
    container = inside_batchnorm(net, hidden_layer)
    if view_batching == "auto":
        pixels = 1
        for side in (input_shape or (1,))[1:]:
            pixels *= int(side)
        return "one_pass" if container is None and pixels <= ONE_PASS_MAX_PIXELS else "per_view"
    if view_batching == "one_pass" and container is not None:
        raise ValueError(
            f"view_batching='one_pass' cannot read hidden_layer={hidden_layer!r}: it lies inside the BatchNorm "
            f"module {container!r}, which runs once per view in one-pass mode. Use view_batching='per_view', or a "
            f"hidden_layer outside it (e.g. {container!r} itself)."
        )
    return view_batching
