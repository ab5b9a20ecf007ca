"""Per-view BatchNorm statistics with the views stacked in one batch.

BYOL's paper runs each augmented view through the networks on its own, so every
BatchNorm layer normalises a view with that view's statistics. Running both views as
one batch of ``2N`` is faster (one call per layer instead of two, larger matrix
products), but then BatchNorm mixes the views. :func:`per_view_batchnorm` gives both:
inside it, every batch normalisation with batch statistics that a BatchNorm layer of the
given modules (any subclass of ``torch.nn.modules.batchnorm._BatchNorm``:
``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` in one process, timm's ``BatchNormAct2d``, your
own) computes through ``torch.nn.functional.batch_norm`` is done on each of the
``num_views`` equal chunks of the batch (dim 0), in order, and the results concatenated.
Every other operation sees the whole batch.

The result is the same as one pass per view, to float rounding: the same outputs and
gradients, and the same running statistics (each layer updates them once per view, in
the views' order, exactly as separate passes do, ``num_batches_tracked`` and the
cumulative average of ``momentum=None`` included).

Nothing is changed on the modules: the split is a ``torch.overrides.TorchFunctionMode``,
which is local to the thread that enters the block. Another thread calling the same
network meanwhile (the user's own ``net(x)``, another learner) computes what it would
without the block, and blocks may overlap or nest in any number of threads.

Two cases cannot be split this way and raise instead of mixing the views silently: a
``SyncBatchNorm`` that synchronises across processes (its statistics come from its own
autograd function; :func:`unsplittable_layers` names them at entry, and ``BYOL`` then
runs one forward per view), and a ``_BatchNorm`` subclass whose ``forward`` computes
batch statistics without ``torch.nn.functional.batch_norm`` (found at the end of the
block, a ``RuntimeError`` naming the layer).

Example:
    >>> bn = nn.BatchNorm1d(3)
    >>> views = torch.randn(4, 3), torch.randn(4, 3) + 5
    >>> with per_view_batchnorm(bn):
    ...     both = bn(torch.cat(views))
    >>> torch.allclose(both[4:], nn.BatchNorm1d(3)(views[1]), atol=1e-6)
    True
"""
from __future__ import annotations

import contextlib
import math
import sys
import threading
import warnings
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

__all__ = ["per_view_batchnorm", "batchnorm_layers", "uses_batch_statistics", "resolve_view_batching",
           "unsplittable_layers"]

#: ``BYOL(view_batching=...)``: ``"auto"``, ``"one_pass"``, ``"per_view"`` or ``"concat"``.
ViewBatching = Literal["auto", "one_pass", "per_view", "concat"]
VIEW_BATCHINGS = ("auto", "one_pass", "per_view", "concat")



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


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BATCH_NORM_DEFAULTS = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}
_local = threading.local()  # .seen: ids of the layers split in this thread's open blocks


def _known_forwards() -> Tuple[Callable[..., Any], ...]:
    """Forwards known to compute batch statistics through ``F.batch_norm`` (and nothing else)."""
    known: List[Callable[..., Any]] = [_BatchNorm.forward, nn.SyncBatchNorm.forward]
    norm_act = sys.modules.get("timm.layers.norm_act")
    if norm_act is not None and hasattr(norm_act, "BatchNormAct2d"):
        known.append(norm_act.BatchNormAct2d.forward)
    return tuple(known)


def _synchronises(layer: _BatchNorm) -> bool:
    """Whether ``layer`` is a ``SyncBatchNorm`` that will synchronise its statistics across processes."""
    if not (isinstance(layer, nn.SyncBatchNorm) and layer.training and torch.distributed.is_available()
            and torch.distributed.is_initialized()):
        return False
    group = layer.process_group if layer.process_group is not None else torch.distributed.group.WORLD
    return bool(torch.distributed.get_world_size(group) > 1)


def unsplittable_layers(*modules: nn.Module) -> List[str]:
    """Descriptions of the BatchNorm layers in ``modules`` that :func:`per_view_batchnorm` cannot split.

    Today: ``SyncBatchNorm`` layers that synchronise across processes (training mode,
    ``torch.distributed`` initialised, more than one rank); their statistics come from an
    autograd function that sees the whole batch. Run one forward per view for those.

    Example:
        >>> unsplittable_layers(nn.SyncBatchNorm(3))  # no process group: an ordinary BatchNorm
        []
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return []
    return [f"{type(layer).__name__}({layer.num_features})" for layer in batchnorm_layers(*modules)
            if _synchronises(layer)]


def _check_batch_size(x: Tensor) -> None:
    values = x.shape[0] * (math.prod(x.shape[2:]) if x.ndim > 2 else 1)
    if values == 1:  # what F.batch_norm checks in training
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")


class _PerViewMode(TorchFunctionMode):
    """Splits ``F.batch_norm`` calls of the given layers into per-view calls, in the thread that entered it."""

    def __init__(self, layers: Sequence[_BatchNorm], num_views: int, watched: Sequence[_BatchNorm] = ()) -> None:
        super().__init__()
        self.num_views = num_views
        self.layers = list(layers)
        # a call is traced to its layer by its running mean (tracked) or weight (affine); a layer with
        # neither (affine=False, track_running_stats=False) passes no tensor, so such calls are split
        # whenever the modules hold such a layer
        self.by_tensor: Dict[int, _BatchNorm] = {}
        for layer in self.layers:
            for t in (layer.running_mean, layer.weight):
                if t is not None:
                    self.by_tensor[id(t)] = layer
        self.anonymous = any(layer.running_mean is None and layer.weight is None for layer in self.layers)
        # layers whose own forward might compute statistics without F.batch_norm: their counter's
        # increment (seen here, in this thread only) must be followed by a split
        self.watched: Dict[int, _BatchNorm] = {id(layer.num_batches_tracked): layer for layer in watched}
        self.counted: List[_BatchNorm] = []

    def owner(self, bound: Dict[str, Any]) -> Optional[_BatchNorm]:
        for key in ("running_mean", "weight"):
            t = bound[key]
            if t is not None:
                return self.by_tensor.get(id(t))
        return self.layers[0] if self.anonymous and bound["bias"] is None else None

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            # eager passes weight... by keyword, torch.compile positionally
            bound = dict(_BATCH_NORM_DEFAULTS)
            bound.update(zip(_BATCH_NORM_ARGS, args))
            bound.update(kwargs)
            layer = self.owner(bound) if bound["training"] else None
            if layer is not None:
                return self.split(layer, bound)
        elif func is Tensor.add_ and self.watched and args and id(args[0]) in self.watched:
            self.counted.append(self.watched[id(args[0])])
        return func(*args, **kwargs)

    def split(self, layer: _BatchNorm, bound: Dict[str, Any]) -> Tensor:
        x: Tensor = bound["input"]
        views = self.num_views
        if x.shape[0] % views:
            raise ValueError(
                f"per-view BatchNorm: {type(layer).__name__} got a batch of {x.shape[0]}, which does not split "
                f"into {views} views of equal size"
            )
        momenta = [bound["momentum"]] * views
        counter = layer.num_batches_tracked
        if bound["running_mean"] is not None and counter is not None:
            # the layer's forward counted one batch; separate passes count one per view, and with
            # momentum=None each view's factor is 1 / (its own count)
            if layer.momentum is None:
                first = int(counter.item())
                momenta = [1.0 / (first + k) for k in range(views)]
            with torch.no_grad():
                counter.add_(views - 1)
        if not torch.compiler.is_compiling():
            seen = getattr(_local, "seen", None)
            if seen is not None:
                seen.add(id(layer))
        outputs = []
        for chunk, momentum in zip(x.chunk(views), momenta):
            _check_batch_size(chunk)
            # torch.batch_norm, not F.batch_norm: an enclosing block must not split the chunks again
            outputs.append(torch.batch_norm(chunk, bound["weight"], bound["bias"], bound["running_mean"],
                                            bound["running_var"], True, momentum, bound["eps"],
                                            torch.backends.cudnn.enabled))
        return torch.cat(outputs)


@contextlib.contextmanager
def per_view_batchnorm(*modules: nn.Module, num_views: int = 2) -> Iterator[List[_BatchNorm]]:
    """Inside the block, BatchNorm layers in ``modules`` normalise each view with its own statistics.

    The views are the ``num_views`` equal consecutive chunks of the batch (dim 0), as
    ``torch.cat((view1, view2))`` stacks them. Layers in eval mode with running
    statistics are not affected (their output does not depend on the batch). Nothing is
    set on any module: the block acts in the calling thread only, other threads using
    the same modules meanwhile are unaffected, and blocks nest (the innermost block that
    holds a layer splits it).

    Args:
        modules: the networks (searched recursively; a layer shared by several is
            handled once).
        num_views: number of views stacked along the batch dimension.

    Yields:
        The list of BatchNorm layers that are split (empty if none).

    Raises:
        ValueError: for ``num_views`` < 1; at entry, for a ``SyncBatchNorm`` that
            synchronises across processes (see :func:`unsplittable_layers`); from a
            layer, for a batch that does not split into ``num_views`` equal chunks.
        RuntimeError: at the end of the block, when a BatchNorm layer with its own
            ``forward`` counted a batch without computing it through
            ``torch.nn.functional.batch_norm`` (its views were mixed).

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
    if not layers:
        yield layers
        return
    unsplittable = unsplittable_layers(*layers)
    if unsplittable:
        raise ValueError(
            f"per_view_batchnorm cannot split {', '.join(unsplittable)}: a SyncBatchNorm synchronising across "
            f"processes computes its statistics in its own autograd function, over the whole batch. Run one "
            f"forward per view (BYOL does so by itself for view_batching='one_pass')."
        )
    if torch.compiler.is_compiling():
        with _PerViewMode(layers, num_views):
            yield layers
        return
    # layers whose own forward might compute statistics some other way
    known = _known_forwards()
    watched = [layer for layer in layers if uses_batch_statistics(layer) and layer.num_batches_tracked is not None
               and ("forward" in vars(layer) or type(layer).forward not in known)]
    outermost = not hasattr(_local, "seen")
    if outermost:
        _local.seen = set()
    try:
        mode = _PerViewMode(layers, num_views, watched)
        with mode:
            yield layers
        missed = {id(layer): layer for layer in mode.counted if id(layer) not in _local.seen}
        if missed:
            names = ", ".join(f"{type(layer).__name__}({layer.num_features})" for layer in missed.values())
            raise RuntimeError(
                f"per_view_batchnorm could not split {names}: its forward computed batch statistics without "
                f"torch.nn.functional.batch_norm, so it normalised the views together. Use one forward per "
                f"view (BYOL(view_batching='per_view')), or compute the normalisation with F.batch_norm."
            )
    finally:
        if outermost:
            del _local.seen


def inside_batchnorm(net: nn.Module, name: Optional[str]) -> Optional[str]:
    """The name of a BatchNorm layer of ``net`` that strictly contains the submodule ``name``, else None.

    (e.g. the ``act`` of timm's ``BatchNormAct2d``). Such a layer sees the whole batch
    under :func:`per_view_batchnorm`, which splits only the normalisation itself, so
    ``view_batching="one_pass"`` may read it (it could not while the split ran the whole
    BatchNorm module once per view).

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
    both compute the same thing, so the choice is about speed only. ``net`` and
    ``hidden_layer`` (the resolved dotted name) are accepted for callers of earlier
    versions, where a hidden layer inside a BatchNorm module forced ``"per_view"``; the
    split of the normalisation alone lets one pass read such a layer.

    Raises:
        ValueError: for an unknown value, or ``concat_views=True`` together with another
            ``view_batching``.

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
    if view_batching == "auto":
        pixels = 1
        for side in (input_shape or (1,))[1:]:
            pixels *= int(side)
        return "one_pass" if pixels <= ONE_PASS_MAX_PIXELS else "per_view"
    return view_batching
