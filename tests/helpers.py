"""Test-only helpers: float comparisons whose tolerance scales with the magnitudes compared, and
independent references that several test files need (ImageNet normalisation written out by hand).

Float results change with the CPU (AVX2 vs AVX-512 kernels), the thread count and the memory
format, by an amount proportional to the magnitudes that went into the computation. A quantity
that is zero in exact arithmetic (the gradient of a convolution bias feeding a BatchNorm) comes
out as noise of that size, so an absolute tolerance on it fails on some machines. These helpers
compare ``|actual - expected| <= rtol * |expected| + scale_rtol * scale`` where ``scale`` is the
largest magnitude in the tensors compared (or of a whole model's gradients), and say which
numbers broke the bound.
"""
from __future__ import annotations

from typing import Iterable, List, Mapping, Optional

import torch
from torch import Tensor


def magnitude(*tensors: Tensor) -> float:
    """The largest absolute value over all ``tensors`` (0.0 for empty ones)."""
    return max((float(t.detach().abs().max()) for t in tensors if t.numel()), default=0.0)


def assert_close_scaled(
    actual: Tensor,
    expected: Tensor,
    rtol: float = 1e-5,
    scale_rtol: Optional[float] = None,
    scale: Optional[float] = None,
    msg: str = "",
) -> None:
    """Elementwise ``|actual - expected| <= rtol |expected| + scale_rtol * scale``.

    ``scale`` defaults to the largest magnitude of either tensor; pass a model-wide scale when
    comparing one of many tensors (e.g. every gradient of a model). ``scale_rtol`` defaults to
    ``rtol``.
    """
    actual = torch.as_tensor(actual).detach()
    expected = torch.as_tensor(expected).detach()
    if actual.shape != expected.shape:
        raise AssertionError(f"{msg}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.double().cpu(), expected.double().cpu()
    if not bool(torch.isfinite(a).all()):
        raise AssertionError(f"{msg}: actual has non-finite values: {a.flatten()[:8].tolist()}")
    scale = magnitude(a, e) if scale is None else float(scale)
    scale_rtol = rtol if scale_rtol is None else scale_rtol
    diff = (a - e).abs()
    bound = rtol * e.abs() + scale_rtol * scale
    excess = diff - bound
    if bool((excess > 0).any()):
        i = int(excess.flatten().argmax())
        raise AssertionError(
            f"{msg}: {int((excess > 0).sum())} of {diff.numel()} elements differ beyond the bound; worst at flat index "
            f"{i}: actual {a.flatten()[i].item():.9g}, expected {e.flatten()[i].item():.9g}, |diff| "
            f"{diff.flatten()[i].item():.3e} > {bound.flatten()[i].item():.3e} (rtol {rtol:g} x |expected| + "
            f"{scale_rtol:g} x scale {scale:.4g}); max |diff| {diff.max().item():.3e}"
        )


def assert_tensors_close(
    actual: Mapping[str, Tensor], expected: Mapping[str, Tensor], rtol: float = 1e-4, scale_rtol: float = 1e-5
) -> None:
    """Compare two dicts of tensors (gradients, state dicts) on one scale: the largest magnitude
    over all of ``expected``, so a tensor that is zero in exact arithmetic is held to the noise
    level of the whole model, not to an absolute number."""
    missing = set(expected) ^ set(actual)
    if missing:
        raise AssertionError(f"the dicts differ in keys: {sorted(missing)}")
    floats = [t for t in expected.values() if isinstance(t, Tensor) and t.is_floating_point()]
    scale = magnitude(*floats)
    for name, want in expected.items():
        got = actual[name]
        if isinstance(want, Tensor) and want.is_floating_point():
            assert_close_scaled(got, want, rtol=rtol, scale_rtol=scale_rtol, scale=scale, msg=name)
        elif isinstance(want, Tensor) and not torch.equal(got, want):
            raise AssertionError(f"{name}: {got} != {want}")


#: ImageNet channel statistics written out here, not imported from byol_wrap: an independent reference.
IMAGENET_MEAN_BY_HAND = (0.485, 0.456, 0.406)
IMAGENET_STD_BY_HAND = (0.229, 0.224, 0.225)


def imagenet_normalize_by_hand(x: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel of ``(N, 3, H, W)`` float images, with the statistics above."""
    mean = torch.tensor(IMAGENET_MEAN_BY_HAND, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_BY_HAND, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Tensor]) -> List[Tensor]:
    """The documented loop, once per batch: loss, backward, optimizer step, EMA through ``unwrap(model)``
    (``model`` may be the learner or a wrapper of it). Returns the detached losses."""
    from byol_wrap import unwrap

    losses = []
    for x in batches:
        loss = model(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        unwrap(model).update_moving_average()
        losses.append(loss.detach())
    return losses
