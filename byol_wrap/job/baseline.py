"""The baseline every pretrained encoder must beat: the same architecture, untrained.

``untrained_like(encoder)`` rebuilds the encoder's network with fresh random weights (seeded, without
touching the caller's random state) and wraps it exactly as the encoder (hidden layer, pooling,
normalisation), so the two are compared on the same footing by ``byol-wrap eval`` and in
``neighbours.png``.

How the fresh network is made, in order:

1. ``model=``: a new instance of the architecture that the caller passes (copied, never modified), or the
   caller's own spec string (built: the caller named that code);
2. the encoder's spec when it is a built-in family (``torchvision/``, ``timm/``, ``byol_wrap/``),
   built as ``pretrain`` builds it (no code named in a file is run);
3. otherwise a copy of the trained network with ``reset_parameters()`` called on every submodule
   that has it (a warning says so: parameters a module initialises outside ``reset_parameters``
   keep their trained values).

Example:
    >>> import tempfile
    >>> from byol_wrap.job.models import small_cnn
    >>> from byol_wrap.job.encoder import export_encoder, load_encoder
    >>> path = export_encoder(small_cnn(8), tempfile.mkdtemp() + "/e.pt", model_spec="byol_wrap/small_cnn:8",
    ...                       hidden_layer=-1, image_size=16, normalize=None, representation_size=64, steps=0)
    >>> untrained_like(load_encoder(path))(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)).shape
    torch.Size([1, 64])
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Union

import torch
from torch import nn

__all__ = ["untrained_like"]


def _fresh_net(encoder: Any, model: Union[nn.Module, str, None]) -> nn.Module:
    from .models import build_model
    from .rebuild import is_builtin_spec

    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    image_size = encoder.meta.get("image_size")
    side = image_size if isinstance(image_size, int) else (image_size[0] if image_size else None)
    spec = encoder.meta.get("model_spec")
    if isinstance(model, str) or is_builtin_spec(spec):  # the caller's own spec, or a built-in family's
        built: nn.Module = build_model(model if isinstance(model, str) else spec, image_size=side,
                                       channels=int(encoder.meta.get("channels") or 3))
        return built
    warnings.warn(f"the untrained baseline of {type(encoder.net).__name__} (spec {spec!r}) is the trained network "
                  f"with reset_parameters() called on every module; pass model=<a new instance> for an exact "
                  f"baseline", stacklevel=3)
    net: nn.Module = copy.deepcopy(encoder.net)
    for module in net.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        reset_stats = getattr(module, "reset_running_stats", None)
        if callable(reset_stats):
            reset_stats()
    return net


def untrained_like(encoder: Any, seed: int = 0, model: Union[nn.Module, str, None] = None) -> Any:
    """An :class:`~byol_wrap.job.encoder.Encoder` of the same architecture with fresh random weights.

    Args:
        encoder: the trained encoder (``load_encoder(...)``).
        seed: seeds the initialisation (the caller's global random state is left as it was).
        model: a new, untrained instance of the architecture (copied, not changed), or its spec (built;
            that code runs: you named it), for a network outside the built-in families.

    Returns:
        An encoder in eval mode on the trained encoder's device, ``meta["untrained"] = True``.
    """
    from .encoder import Encoder

    device = next((p.device for p in encoder.net.parameters()), torch.device("cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _fresh_net(encoder, model)
    meta = dict(encoder.meta, untrained=True, steps=0)
    baseline = Encoder(net, encoder.extractor.layer, encoder.meta.get("normalize"),
                       encoder.extractor.token_pool, meta)
    return baseline.to(device).eval()
