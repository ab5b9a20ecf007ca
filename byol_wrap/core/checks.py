"""Checks that turn silent failures into clear errors: non-finite inputs, losses and weights,
and float images far outside [0, 1].

Each check costs one reduction (the weight check: one fused multi-tensor reduction) and
one host sync (``.item()``/``.tolist()``); ``BYOL`` runs them unless constructed with
``check_finite=False``. A failure raises :class:`NonFiniteError`
*before* anything the user owns has changed: the input batch is checked before any forward
pass, BatchNorm running statistics touched by a forward that produced a non-finite loss are
put back (:func:`restore_batchnorm_on_error`), and the EMA refuses non-finite online weights.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

#: Float images outside this range (by more than nothing: 0-255 floats, standard-normal
#: noise, already-normalised images) trigger :class:`ImageRangeWarning` once per learner.
WARN_BELOW, WARN_ABOVE = -0.5, 1.5


class NonFiniteError(FloatingPointError, RuntimeError):
    """A NaN or infinity in the input batch, the loss or the online weights.

    Subclasses both ``FloatingPointError`` and ``RuntimeError``, so either ``except`` catches it.
    """


class ImageRangeWarning(UserWarning):
    """Float images far outside the [0, 1] range the default augmentations expect."""


def describe_nonfinite(x: Tensor) -> str:
    """Where and what the non-finite values of ``x`` are, in words (runs only when a check failed).

    Example:
        >>> describe_nonfinite(torch.tensor([[0.0, float("nan")], [float("inf"), 1.0]]))
        '1 NaN and 1 +inf among 4 values, in samples [0, 1] of 2'
    """
    x = x.detach()
    counts = [(int(torch.isnan(x).sum()), "NaN"), (int(torch.isposinf(x).sum()), "+inf"),
              (int(torch.isneginf(x).sum()), "-inf")]
    what = " and ".join(f"{n} {kind}" for n, kind in counts if n) or "no non-finite value"
    where = ""
    if x.ndim >= 1 and x.shape[0] > 0:
        bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        where = f", in samples [{shown}] of {x.shape[0]}"
    return f"{what} among {x.numel()} values{where}"


def batch_range(x: Tensor) -> Tuple[float, float]:
    """``(min, max)`` of a float batch with one host sync; NaN anywhere gives NaN, an inf gives an inf."""
    lo, hi = torch.aminmax(x.detach())
    lo_hi = torch.stack((lo, hi)).float().tolist()
    return lo_hi[0], lo_hi[1]


def check_input_batch(x: Tensor, what: str = "input batch") -> Tuple[float, float]:
    """Raise :class:`NonFiniteError` when ``x`` holds a NaN or inf; else return its ``(min, max)``.

    Example:
        >>> check_input_batch(torch.tensor([[0.0, 1.0]]))
        (0.0, 1.0)
    """
    lo, hi = batch_range(x)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError(
            f"the {what} has non-finite values: {describe_nonfinite(x)}. Nothing was run and no statistic "
            f"changed; drop or repair those samples (e.g. torch.nan_to_num) before calling the learner"
        )
    return lo, hi


def range_message(lo: float, hi: float, channels: int = 3, normalized: bool = False) -> Optional[str]:
    """The warning for float images whose values ``[lo, hi]`` lie far outside [0, 1], else ``None``.

    For ``channels != 3`` the default augmentations work at any scale: only unnormalised inputs warn.

    Example:
        >>> range_message(0.0, 1000.0, channels=13, normalized=True) is None
        True
    """
    if lo >= WARN_BELOW and hi <= WARN_ABOVE or channels != 3 and normalized:
        return None
    if channels != 3:
        return (f"float images span [{lo:.4g}, {hi:.4g}] and reach the net unnormalised: the {channels}-channel "
                f"augmentations work at any scale, but pass normalize=(mean, std) with your data's per-channel "
                f"statistics (normalize='auto' uses none for {channels}-channel images). Warned once per learner.")
    hint = ("0-255 values as floats? divide by 255 or pass uint8" if hi > 2.0 and lo >= -0.5 else
            "already normalised, or noise? pass images in [0, 1]: the learner normalises after augmenting")
    return (f"float images should lie in [0, 1] (or be uint8 in [0, 255]); this batch spans "
            f"[{lo:.4g}, {hi:.4g}] ({hint}). The colour augmentations assume [0, 1]. Warned once per learner.")


def nonfinite_names(named: Iterable[Tuple[str, Tensor]]) -> List[str]:
    """Names of the tensors holding a NaN or inf (runs only when a check failed)."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every floating tensor in ``tensors`` is finite (no NaN, no inf).

    One fused multi-tensor reduction per device and dtype (``torch._foreach_norm``, the
    2-norm, in which a NaN or an inf anywhere gives a non-finite norm) and one host sync
    per device, instead of a reduction and a copy per tensor. A 2-norm can also overflow
    for finite values (above about 1e19 in float32): a non-finite norm is therefore
    confirmed with an exact ``torch.isfinite`` on that group's tensors, which runs only
    then. float16 tensors are reduced in float32.

    Example:
        >>> all_finite([torch.ones(3), torch.tensor([1e30, -1e30])])
        True
        >>> all_finite([torch.ones(3), torch.tensor([0.0, float("-inf")])])
        False
    """
    groups: Dict[Tuple[torch.device, torch.dtype], List[Tensor]] = {}
    for t in tensors:
        if t.is_floating_point() and t.numel():
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    by_device: Dict[torch.device, List[Tuple[List[Tensor], Tensor]]] = {}
    for (device, dtype), group in groups.items():
        wide = torch.float32 if dtype == torch.float16 else None  # 2-norms of float16 overflow at 65504
        norms = torch.stack(torch._foreach_norm(group, 2, dtype=wide))
        by_device.setdefault(device, []).append((group, norms))
    for device_groups in by_device.values():
        finite = torch.stack([torch.isfinite(norms).all() for _, norms in device_groups]).tolist()
        for ok, (group, _) in zip(finite, device_groups):
            if not ok and not all(bool(torch.isfinite(t).all()) for t in group):
                return False
    return True


def check_online_weights(tensors: Sequence[Tensor], modules: Mapping[str, nn.Module]) -> None:
    """Raise :class:`NonFiniteError` before an EMA update when ``tensors`` are not all finite,
    naming the non-finite parameters of ``modules`` (prefix -> module).

    Example:
        >>> check_online_weights([torch.ones(2)], {"net": nn.Linear(1, 1)})
    """
    if all_finite(tensors):
        return
    named = [(f"{prefix}.{name}", p) for prefix, module in modules.items() for name, p in module.named_parameters()]
    raise NonFiniteError(
        f"update_moving_average() refused: these online parameters are non-finite: "
        f"{shorten(nonfinite_names(named))}; the target was left unchanged. The optimizer diverged: lower "
        f"the learning rate, clip gradients, or restore the last good checkpoint."
    )


def shorten(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_loss(loss: Tensor, parameters: Iterable[Tuple[str, Tensor]]) -> None:
    """Raise :class:`NonFiniteError` for a NaN/inf loss, naming the non-finite parameters if any."""
    value = float(loss.detach().float())
    if math.isfinite(value):
        return
    bad = nonfinite_names(parameters)
    cause = (f"these parameters are non-finite: {shorten(bad)} (the optimizer diverged: lower the learning rate, "
             f"clip gradients, or restore the last good checkpoint)" if bad else
             "the parameters are finite, so an intermediate value overflowed (under float16 autocast, try "
             "bfloat16; else lower the learning rate)")
    raise NonFiniteError(
        f"the loss is {value} although the input batch is finite; {cause}. The BatchNorm running statistics "
        f"of this forward were put back, so the networks are as before the call"
    )


def batchnorm_buffers(module: nn.Module) -> List[Tensor]:
    """The running statistics a forward of ``module`` in its current mode would update."""
    buffers: List[Tensor] = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
            buffers.extend(t for t in (m.running_mean, m.running_var, m.num_batches_tracked) if t is not None)
    return buffers


@contextlib.contextmanager
def restore_batchnorm_on_error(module: nn.Module) -> Iterator[None]:
    """Snapshot the BatchNorm running statistics of ``module``; if the block raises (a
    :class:`NonFiniteError` from the loss check, or any error half-way through a forward),
    copy them back, so a failed step leaves no trace in them."""
    buffers = batchnorm_buffers(module)
    saved = [t.detach().clone() for t in buffers]
    try:
        yield
    except Exception:
        with torch.no_grad():
            for t, s in zip(buffers, saved):
                t.copy_(s)
        raise
