"""Take a representation from any layer of a network through a temporary forward hook.

The hook lives only for the duration of one forward pass, so wrapping a net twice never
stacks hooks, ``copy.deepcopy`` of a net or learner copies no stale hook, and nothing is
left on the user's module afterwards. When the representation comes from an inner layer,
the forward stops as soon as that layer has run ("early exit"): the layers after it are
not computed, and the result is the same tensor the full forward would have produced.
"""
from __future__ import annotations

import contextlib
import difflib
import itertools
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

LayerSpec = Union[str, int, None]
TOKEN_POOLS = ("auto", "cls", "mean", "spatial")


class _EarlyExit(BaseException):
    """Raised by the hook to stop the forward pass; BaseException so that a model's own
    ``except Exception`` cannot swallow it."""


def resolve_layer(net: nn.Module, hidden_layer: LayerSpec) -> Optional[str]:
    """Turn ``hidden_layer`` into a dotted module name, or ``None`` for the net's output.

    ``hidden_layer`` may be a dotted name (``"layer4.1"``), an index into
    ``net.children()`` (``-2`` is the second-to-last child), or ``-1``/``None`` for the
    net's own output.

    Raises:
        ValueError: for an unknown name (listing the closest existing names) or an index
            out of range.
        TypeError: for any other type.

    Example:
        >>> import torchvision
        >>> resolve_layer(torchvision.models.resnet18(), -2)
        'avgpool'
    """
    if hidden_layer is None or (isinstance(hidden_layer, int) and not isinstance(hidden_layer, bool) and hidden_layer == -1):
        return None
    if isinstance(hidden_layer, bool) or not isinstance(hidden_layer, (int, str)):
        raise TypeError(
            f"hidden_layer must be a module name (str), a child index (int) or None, got "
            f"{type(hidden_layer).__name__}"
        )
    if isinstance(hidden_layer, int):
        children = [name for name, _ in net.named_children()]
        if not -len(children) <= hidden_layer < len(children):
            raise ValueError(
                f"hidden_layer={hidden_layer} is out of range: the net has {len(children)} children "
                f"({', '.join(children)}). Use an index in [{-len(children)}, {len(children) - 1}], "
                f"a dotted module name, or -1 for the net's output."
            )
        return children[hidden_layer]
    names = [name for name, _ in net.named_modules() if name]
    if hidden_layer not in names:
        close = difflib.get_close_matches(hidden_layer, names, n=5, cutoff=0.4)
        hint = f"Closest names: {', '.join(close)}. " if close else ""
        raise ValueError(
            f"hidden_layer {hidden_layer!r} is not a module of {type(net).__name__}. {hint}"
            f"byol_wrap.list_layers(net, image_size) lists every candidate with its output shape."
        )
    return hidden_layer


def _first_tensor(output: Any, where: str) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"{where} returned {type(output).__name__}, not a tensor; choose a hidden_layer whose "
        f"output is a tensor (see byol_wrap.list_layers)"
    )


def pool(x: Tensor, token_pool: str = "cls") -> Tensor:
    """Reduce a layer output to one vector per sample.

    4-D ``(N, C, H, W)`` is global-average-pooled over H and W; 3-D tokens ``(N, L, D)``
    give the class token (``token_pool="cls"``, token 0) or the mean over tokens
    (``"mean"``); ``"spatial"`` treats 3-D as ``(N, C, L)`` feature maps of a 1-D
    convnet and averages over L; 2-D is returned as it is; other ranks are flattened.

    Example:
        >>> pool(torch.ones(2, 8, 4, 4)).shape
        torch.Size([2, 8])
        >>> pool(torch.ones(2, 5, 16), "mean").shape
        torch.Size([2, 16])
    """
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    if x.ndim == 3:
        if token_pool == "cls":
            return x[:, 0]
        if token_pool == "mean":
            return x.mean(dim=1)
        if token_pool == "spatial":
            return x.mean(dim=2)
        raise ValueError(f"token_pool must be 'cls', 'mean' or 'spatial' here, got {token_pool!r}")
    if x.ndim == 2:
        return x
    return x.flatten(1)


def default_token_pool(net: nn.Module) -> str:
    """What ``token_pool="auto"`` means for ``net``'s 3-D outputs.

    ``"cls"`` when the net has a class token (timm ``cls_token``, torchvision
    ``class_token``); ``"spatial"`` for 1-D convnets (any ``nn.Conv1d``, no attention);
    otherwise ``"mean"`` over tokens.
    """
    for attr in ("cls_token", "class_token"):
        if isinstance(getattr(net, attr, None), Tensor):
            return "cls"
    kinds = {type(m) for m in net.modules()}
    if nn.Conv1d in kinds and nn.MultiheadAttention not in kinds:
        return "spatial"
    return "mean"


class RepresentationExtractor:
    """Run ``net`` and return the (pooled) output of one of its layers.

    A plain object (not a module) holding only the layer's name, so one extractor serves
    the online net and its target copy alike.

    Args:
        layer: dotted module name from :func:`resolve_layer`, or ``None`` for the output.
        token_pool: ``"cls"``/``"mean"``/``"auto"`` pooling for 3-D token outputs.
        pool_fn: a callable replacing the default pooling entirely.
        early_exit: stop the forward once ``layer`` has produced its output.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18()
        >>> extract = RepresentationExtractor("avgpool")
        >>> extract(net, torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
    """

    def __init__(
        self,
        layer: Optional[str],
        token_pool: str = "auto",
        pool_fn: Optional[Callable[[Tensor], Tensor]] = None,
        early_exit: bool = True,
    ) -> None:
        if token_pool not in TOKEN_POOLS:
            raise ValueError(f"token_pool must be one of {TOKEN_POOLS}, got {token_pool!r}")
        self.layer = layer
        self.token_pool = token_pool
        self.pool_fn = pool_fn
        self.early_exit = early_exit

    def raw(self, net: nn.Module, x: Tensor) -> Tensor:
        """The layer's output before pooling."""
        if self.layer is None:
            return _first_tensor(net(x), f"{type(net).__name__}.forward")
        captured: List[Tensor] = []
        early_exit = self.early_exit

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not captured:
                captured.append(_first_tensor(output, f"layer {self.layer!r}"))
                if early_exit:
                    raise _EarlyExit

        handle = net.get_submodule(self.layer).register_forward_hook(hook)
        try:
            net(x)
        except _EarlyExit:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(
                f"hidden layer {self.layer!r} never ran during the forward pass of "
                f"{type(net).__name__}; choose a layer that the forward uses (see byol_wrap.list_layers)"
            )
        return captured[0]

    def __call__(self, net: nn.Module, x: Tensor) -> Tensor:
        out = self.raw(net, x)
        if self.pool_fn is not None:
            return self.pool_fn(out)
        token_pool = default_token_pool(net) if self.token_pool == "auto" else self.token_pool
        return pool(out, token_pool)


def infer_input_shape(
    net: nn.Module,
    image_size: Union[int, Sequence[int], None] = None,
    input_shape: Optional[Sequence[int]] = None,
) -> Tuple[int, ...]:
    """The per-sample input shape for the construction-time probe.

    ``input_shape`` wins when given (e.g. ``(channels, length)`` for a 1-D signal
    encoder). Otherwise ``(C, H, W)`` from ``image_size`` with C the ``in_channels`` of
    the net's first convolution (3 if it has none).

    Example:
        >>> infer_input_shape(nn.Conv2d(1, 8, 3), 28)
        (1, 28, 28)
    """
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
        return shape
    if image_size is None:
        raise ValueError("give image_size (int or (H, W)) or input_shape")
    height, width = image_size_pair(image_size)
    channels = 3
    for module in net.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            channels = module.in_channels
            break
    return (channels, height, width)


def image_size_pair(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``224 -> (224, 224)``; ``(H, W)`` is checked and returned as a tuple."""
    if isinstance(image_size, bool):
        raise TypeError("image_size must be an int or an (H, W) pair, got a bool")
    if isinstance(image_size, int):
        size: Tuple[int, ...] = (image_size, image_size)
    elif isinstance(image_size, Sequence) and len(image_size) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) for s in image_size
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(f"image_size must be an int or an (H, W) pair of ints, got {image_size!r}")
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size  # type: ignore[return-value]


def module_device_dtype(net: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the net's first parameter (or buffer); CPU/float32 if none."""
    first: Optional[Tensor] = None
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
        first = tensor if first is None else first
    return (first.device if first is not None else torch.device("cpu")), torch.get_default_dtype()


def cuda_rng_devices(device: torch.device) -> List[int]:
    """The CUDA device indices whose RNG ``torch.random.fork_rng`` must save for ``device``."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextlib.contextmanager
def probe_context(net: nn.Module, grad: bool = False) -> Iterator[None]:
    """Run ``net`` without side effects: eval mode (no BatchNorm statistics update, no
    dropout), the global RNG (CPU and the net's CUDA devices) forked, every module's
    train/eval flag restored afterwards, and gradients off unless ``grad=True``."""
    modes = [(module, module.training) for module in net.modules()]
    device, _ = module_device_dtype(net)
    try:
        with torch.random.fork_rng(devices=cuda_rng_devices(device)), torch.set_grad_enabled(grad):
            net.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training


def list_layers(
    net: nn.Module,
    image_size: Union[int, Sequence[int], None] = None,
    input_shape: Optional[Sequence[int]] = None,
    token_pool: str = "auto",
) -> List[Dict[str, Any]]:
    """Candidate ``hidden_layer`` values with their output shapes and representation sizes.

    Runs one side-effect-free probe (eval mode, no grad, RNG and modes restored) and
    records every module that produced a tensor, in execution order. The entry with
    ``name=None`` is the net's own output (``hidden_layer=-1``).

    Returns:
        A list of dicts with keys ``name``, ``type``, ``output_shape`` (without the batch
        dimension) and ``representation_size``.

    Example:
        >>> import torchvision
        >>> rows = list_layers(torchvision.models.resnet18(), 32)
        >>> [r for r in rows if r["name"] == "avgpool"][0]["representation_size"]
        512
    """
    device, dtype = module_device_dtype(net)
    x = torch.zeros((2, *infer_input_shape(net, image_size, input_shape)), device=device, dtype=dtype)
    pool_mode = default_token_pool(net) if token_pool == "auto" else token_pool
    outputs: Dict[str, Tuple[str, Tensor]] = {}
    handles = []
    for name, module in net.named_modules():
        if not name:
            continue

        def hook(mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            if name not in outputs:
                try:
                    outputs[name] = (type(mod).__name__, _first_tensor(out, name))
                except TypeError:
                    pass

        handles.append(module.register_forward_hook(hook))
    try:
        with probe_context(net):
            final = net(x)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, (kind, out) in outputs.items():
        rows.append(
            {"name": name, "type": kind, "output_shape": tuple(out.shape[1:]),
             "representation_size": int(pool(out, pool_mode).shape[-1])}
        )
    try:
        out = _first_tensor(final, "forward")
        rows.append({"name": None, "type": type(net).__name__, "output_shape": tuple(out.shape[1:]),
                     "representation_size": int(pool(out, pool_mode).shape[-1])})
    except TypeError:
        pass
    return rows
