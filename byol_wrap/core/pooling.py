"""Reduce a layer's output to one vector per sample.

:func:`pool` is the rule (by rank: mean over H, W for feature maps; class token, mean of
tokens or mean over length for 3-D outputs; 2-D as is). :class:`Pooling` is that rule with
its choices for one net resolved once (which token pool ``"auto"`` means, how many
class/register tokens precede the patch tokens, whether feature maps are channels-last),
so the forward pass does not inspect the net again.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

TOKEN_POOLS = ("auto", "cls", "mean", "spatial")


def check_token_pool(token_pool: str) -> None:
    """Raise a ValueError unless ``token_pool`` is one of :data:`TOKEN_POOLS`."""
    if token_pool not in TOKEN_POOLS:
        raise ValueError(f"token_pool must be one of {TOKEN_POOLS}, got {token_pool!r}")


def pool(x: Tensor, token_pool: str = "cls", num_prefix_tokens: int = 0, channels_last: bool = False) -> Tensor:
    """Reduce a layer output to one vector per sample.

    4-D ``(N, C, H, W)`` is global-average-pooled over H and W (and any rank above 4,
    e.g. ``(N, C, D, H, W)`` of a 3-D convnet, over every dimension after C); 3-D tokens
    ``(N, L, D)`` give the class token (``token_pool="cls"``, token 0) or the mean over
    the tokens after the first ``num_prefix_tokens`` (``"mean"``: class and register
    tokens excluded, as in timm's average pooling); ``"spatial"`` treats 3-D as
    ``(N, C, L)`` feature maps of a 1-D convnet and averages over L; 2-D is returned as
    it is; 1-D ``(N,)`` becomes ``(N, 1)``. ``channels_last=True`` reads 4-D outputs as
    ``(N, H, W, C)`` (timm's Swin and other nets with ``output_fmt="NHWC"``).

    Example:
        >>> import torch
        >>> pool(torch.ones(2, 8, 4, 4)).shape
        torch.Size([2, 8])
        >>> pool(torch.ones(2, 5, 16), "mean").shape
        torch.Size([2, 16])
        >>> pool(torch.arange(3.0).view(1, 3, 1), "mean", num_prefix_tokens=1)
        tensor([[1.5000]])
    """
    if x.ndim == 4 and channels_last:
        return x.mean(dim=(1, 2))
    if x.ndim >= 4:
        return x.mean(dim=tuple(range(2, x.ndim)))
    if x.ndim == 3:
        if token_pool == "cls":
            return x[:, 0]
        if token_pool == "mean":
            if num_prefix_tokens >= x.shape[1]:
                raise ValueError(
                    f"cannot average the tokens after {num_prefix_tokens} prefix (class/register) tokens: the "
                    f"layer gives only {x.shape[1]} tokens; choose a layer after the class token is added"
                )
            return x[:, num_prefix_tokens:].mean(dim=1)
        if token_pool == "spatial":
            return x.mean(dim=2)
        raise ValueError(f"token_pool must be 'cls', 'mean' or 'spatial' here, got {token_pool!r}")
    if x.ndim == 2:
        return x
    return x.reshape(x.shape[0], 1)


def prefix_token_count(net: nn.Module) -> int:
    """Number of class/register/distillation tokens that precede the patch tokens.

    timm's ``num_prefix_tokens`` when the net has it, else 1 for a net with a class token
    (torchvision ``class_token``, ``cls_token``), else 0.

    Example:
        >>> import torchvision
        >>> prefix_token_count(torchvision.models.vit_b_16(image_size=32))
        1
    """
    count = getattr(net, "num_prefix_tokens", None)
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    return int(any(isinstance(getattr(net, attr, None), Tensor) for attr in ("cls_token", "class_token")))


def channels_last_outputs(net: nn.Module) -> bool:
    """Whether the net's 4-D feature maps are ``(N, H, W, C)``: timm nets say so with
    ``output_fmt="NHWC"`` (Swin); everything else is taken as ``(N, C, H, W)``.

    Example:
        >>> channels_last_outputs(nn.Conv2d(3, 8, 3))
        False
    """
    return str(getattr(net, "output_fmt", "")).upper().endswith("NHWC")


def describe_pooling(ndim: int, token_pool: str, num_prefix_tokens: int = 0, channels_last: bool = False) -> str:
    """In words, what :func:`pool` does to an output of rank ``ndim`` (batch included).

    Example:
        >>> describe_pooling(4, "cls")
        'mean over H, W'
    """
    if ndim == 4:
        return "mean over H, W" + (" (N, H, W, C)" if channels_last else "")
    if ndim > 4:
        return "mean over all dims after C"
    if ndim == 3:
        if token_pool == "cls":
            return "class token (token 0)"
        if token_pool == "mean":
            skip = f" after {num_prefix_tokens} prefix" if num_prefix_tokens else ""
            return f"mean of tokens{skip}"
        return "mean over length"
    return "as is" if ndim == 2 else "reshaped to (N, 1)"


def default_token_pool(net: nn.Module) -> str:
    """What ``token_pool="auto"`` means for ``net``'s 3-D outputs.

    ``"cls"`` when the net has a class token (timm ``cls_token``, torchvision
    ``class_token``); ``"spatial"`` for 1-D convnets (any ``nn.Conv1d``, no attention);
    otherwise ``"mean"`` over tokens.

    Example:
        >>> default_token_pool(nn.Sequential(nn.Conv1d(2, 4, 3)))
        'spatial'
    """
    for attr in ("cls_token", "class_token"):
        if isinstance(getattr(net, attr, None), Tensor):
            return "cls"
    kinds = {type(m) for m in net.modules()}
    if nn.Conv1d in kinds and nn.MultiheadAttention not in kinds:
        return "spatial"
    return "mean"


@dataclass(frozen=True)
class Pooling:
    """:func:`pool` with its choices for one net fixed: build it with :meth:`for_net`.

    Attributes:
        token_pool: ``"cls"``, ``"mean"`` or ``"spatial"`` for 3-D outputs (never ``"auto"``).
        num_prefix_tokens: tokens skipped by ``"mean"`` (0 for the other pools).
        channels_last: 4-D outputs are ``(N, H, W, C)``.

    Example:
        >>> import torch, torchvision
        >>> pooling = Pooling.for_net(torchvision.models.vit_b_16(image_size=32), "mean")
        >>> pooling
        Pooling(token_pool='mean', num_prefix_tokens=1, channels_last=False)
        >>> pooling(torch.ones(2, 5, 8)).shape
        torch.Size([2, 8])
    """

    token_pool: str = "cls"
    num_prefix_tokens: int = 0
    channels_last: bool = False

    @classmethod
    def for_net(cls, net: nn.Module, token_pool: str = "auto") -> Pooling:
        """Resolve ``token_pool`` (``"auto"``: :func:`default_token_pool`), the prefix tokens
        and the feature-map layout of ``net``, once."""
        check_token_pool(token_pool)
        resolved = default_token_pool(net) if token_pool == "auto" else token_pool
        prefix = prefix_token_count(net) if resolved == "mean" else 0
        return cls(resolved, prefix, channels_last_outputs(net))

    def __call__(self, x: Tensor) -> Tensor:
        return pool(x, self.token_pool, self.num_prefix_tokens, self.channels_last)

    def describe(self, ndim: int) -> str:
        """In words, what this pooling does to an output of rank ``ndim``."""
        return describe_pooling(ndim, self.token_pool, self.num_prefix_tokens, self.channels_last)
