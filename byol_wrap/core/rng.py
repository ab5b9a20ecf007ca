"""Save and restore every random number generator a training loop draws from.

BYOL's augmentations draw from torch's global generator (CPU, or the CUDA device the
images are on), and data pipelines often use Python's ``random`` and numpy's global
generator. Saving the learner and the optimizer is not enough for an exact resume: the
next augmentations would differ. :func:`get_rng_state` captures all of them in a dict of
tensors, ints, floats, strings, lists and tuples only, so it can be saved next to the
model with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``.

Example:
    >>> import random, torch
    >>> state = get_rng_state()
    >>> a = (random.random(), torch.rand(2))
    >>> set_rng_state(state)
    >>> b = (random.random(), torch.rand(2))
    >>> a[0] == b[0] and torch.equal(a[1], b[1])
    True
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Dict, List

import torch

_FORMAT = 1


def _numpy() -> Any:
    try:
        import numpy  # noqa: PLC0415 - optional, and only needed here
    except ImportError:
        return None
    return numpy


def _cuda_ready() -> bool:
    """True when CUDA is available and already initialised (saving never initialises it)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def get_rng_state() -> Dict[str, Any]:
    """The state of Python's ``random``, numpy's global generator (when numpy is
    installed), torch's CPU generator and the generator of every CUDA device (when CUDA
    is initialised in this process).

    Returns:
        A dict with keys ``"format"``, ``"python"``, ``"torch"`` and, when they apply,
        ``"numpy"`` and ``"cuda"`` (one state per device). Every value is a tensor, int,
        float, str, ``None`` or a list/tuple of these, so the dict survives
        ``torch.save`` and ``torch.load(weights_only=True)``.

    Example (exact resume from your own loop):
        >>> import io, torch, byol_wrap
        >>> buffer = io.BytesIO()  # a checkpoint file in practice, next to learner and optimizer
        >>> torch.save({"rng": byol_wrap.get_rng_state()}, buffer)
        >>> x = torch.rand(3)
        >>> _ = buffer.seek(0)
        >>> byol_wrap.set_rng_state(torch.load(buffer, weights_only=True)["rng"])
        >>> torch.equal(torch.rand(3), x)
        True
    """
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "format": _FORMAT,
        "python": (int(version), torch.tensor(internal, dtype=torch.int64), gauss_next),
        "torch": torch.get_rng_state(),
    }
    np = _numpy()
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                          float(cached))
    if _cuda_ready():
        state["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the generators saved by :func:`get_rng_state`.

    Generators absent from ``state`` are left as they are. A ``"numpy"`` entry is
    skipped with a warning when numpy is not installed; when the number of CUDA devices
    differs from the saving process, the devices both have are restored, with a warning.

    Raises:
        TypeError: ``state`` is not a dict from :func:`get_rng_state`.
        ValueError: an entry is malformed (e.g. from another program's checkpoint).

    Example:
        >>> import torch
        >>> state = get_rng_state()
        >>> x = torch.randn(2)
        >>> set_rng_state(state)
        >>> torch.equal(torch.randn(2), x)
        True
    """
    if not isinstance(state, dict) or "torch" not in state or "python" not in state:
        raise TypeError(
            f"set_rng_state expects the dict returned by byol_wrap.get_rng_state(), got "
            f"{type(state).__name__}{' with keys ' + str(sorted(state)) if isinstance(state, dict) else ''}"
        )
    if state.get("format", _FORMAT) != _FORMAT:
        raise ValueError(f"RNG state format {state.get('format')!r} is not supported (expected {_FORMAT})")
    try:
        version, internal, gauss_next = state["python"]
        torch_state = state["torch"]
        if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
            raise ValueError("the 'torch' entry must be a uint8 tensor")
        python_state = (int(version), tuple(int(v) for v in internal.tolist()), gauss_next)
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"malformed RNG state from get_rng_state(): {error}") from error
    random.setstate(python_state)
    torch.set_rng_state(torch_state)
    if "numpy" in state:
        np = _numpy()
        if np is None:
            warnings.warn("the RNG state holds numpy's generator but numpy is not installed; skipped",
                          RuntimeWarning, stacklevel=2)
        else:
            kind, keys, pos, has_gauss, cached = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "cuda" in state:
        _set_cuda(list(state["cuda"]))


def _set_cuda(states: List[torch.Tensor]) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count != len(states):
        warnings.warn(
            f"the RNG state was saved with {len(states)} CUDA device(s), this process has {count}; "
            f"restoring the first {min(count, len(states))}", RuntimeWarning, stacklevel=3,
        )
    for index, device_state in enumerate(states[:count]):
        torch.cuda.set_rng_state(device_state, index)
