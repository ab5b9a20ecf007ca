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
            f"byol_wrap.print_layers(net, image_size) prints every candidate with its output shape and "
            f"representation size (byol_wrap.list_layers returns them as dicts)."
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
        prefix = prefix_token_count(net) if token_pool == "mean" else 0
        return pool(out, token_pool, prefix, channels_last_outputs(net))


def infer_input_shape(
    net: nn.Module,
    image_size: Union[int, Sequence[int], None] = None,
    input_shape: Optional[Sequence[int]] = None,
) -> Tuple[int, ...]:
    """The per-sample input shape for the construction-time probe.

    ``input_shape`` wins when given (e.g. ``(channels, length)`` for a 1-D signal
    encoder). Otherwise ``(C, H, W)`` from ``image_size`` with C the ``in_channels`` of
    the net's first convolution (3 if it has none); a net whose first convolution is a
    ``Conv1d`` or ``Conv3d`` raises a ValueError asking for ``input_shape``.

    Example:
        >>> infer_input_shape(nn.Conv2d(1, 8, 3), 28)
        (1, 28, 28)
    """
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
        return shape
    first_conv = next((m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if image_size is None:
        raise ValueError(
            "give image_size (an int or (H, W)) for image inputs, or input_shape (the per-sample shape, "
            "e.g. (channels, length) for a 1-D signal encoder)"
        )
    if isinstance(first_conv, (nn.Conv1d, nn.Conv3d)):
        layout = "(channels, length)" if isinstance(first_conv, nn.Conv1d) else "(channels, depth, height, width)"
        raise ValueError(
            f"{type(net).__name__} starts with a {type(first_conv).__name__}, so its inputs are {layout}, which "
            f"image_size cannot describe; pass input_shape={layout} (e.g. input_shape=({first_conv.in_channels}, ...))"
        )
    height, width = image_size_pair(image_size)
    channels = first_conv.in_channels if first_conv is not None else 3
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
    :func:`print_layers` shows the same as a table.

    Returns:
        A list of dicts with keys ``name``, ``type``, ``output_shape`` (without the batch
        dimension), ``representation_size``, ``pooling`` (how the output becomes one
        vector, in words), ``calls`` (how often the module ran in one forward; BYOL
        reads its first call) and ``child_index`` (the negative index into
        ``net.children()`` that selects it, for direct children but the last; else
        ``None``; the output row has -1).

    Example:
        >>> import torchvision
        >>> rows = list_layers(torchvision.models.resnet18(), 32)
        >>> [r for r in rows if r["name"] == "avgpool"][0]["representation_size"]
        512
    """
    if token_pool not in TOKEN_POOLS:
        raise ValueError(f"token_pool must be one of {TOKEN_POOLS}, got {token_pool!r}")
    device, dtype = module_device_dtype(net)
    shape = infer_input_shape(net, image_size, input_shape)
    x = torch.zeros((2, *shape), device=device, dtype=dtype)
    pool_mode = default_token_pool(net) if token_pool == "auto" else token_pool
    prefix = prefix_token_count(net) if pool_mode == "mean" else 0
    channels_last = channels_last_outputs(net)
    outputs: Dict[str, Tuple[str, Tensor]] = {}
    calls: Dict[str, int] = {}
    handles = []
    for name, module in net.named_modules():
        if not name:
            continue

        def hook(mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in outputs:
                try:
                    outputs[name] = (type(mod).__name__, _first_tensor(out, name))
                except TypeError:
                    pass

        handles.append(module.register_forward_hook(hook))
    try:
        with probe_context(net):
            final = net(x)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as error:
        raise ValueError(
            f"{type(net).__name__} does not accept inputs of shape {shape}: {error}. Give the image_size the "
            f"net was built for, or input_shape=(channels, ...) for inputs that are not RGB images."
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    children = [name for name, _ in net.named_children()]
    rows = []
    for name, (kind, out) in outputs.items():
        # -1 means the net's output, so the last child has no index of its own
        index = children.index(name) - len(children) if name in children else None
        rows.append(_layer_row(name, kind, out, pool_mode, prefix, channels_last, calls[name],
                               index if index != -1 else None))
    try:
        out = _first_tensor(final, "forward")
        rows.append(_layer_row(None, type(net).__name__, out, pool_mode, prefix, channels_last, 1, -1))
    except TypeError:
        pass
    return rows


def _layer_row(name: Optional[str], kind: str, out: Tensor, pool_mode: str, prefix: int, channels_last: bool,
               calls: int, child_index: Optional[int]) -> Dict[str, Any]:
    try:
        size: Optional[int] = int(pool(out, pool_mode, prefix, channels_last).shape[-1])
    except ValueError:  # too few tokens for the prefix: not a usable representation
        size = None
    return {"name": name, "type": kind, "output_shape": tuple(out.shape[1:]), "representation_size": size,
            "pooling": describe_pooling(out.ndim, pool_mode, prefix, channels_last), "calls": calls,
            "child_index": child_index}


def format_layers(rows: Sequence[Dict[str, Any]], max_depth: Optional[int] = None) -> str:
    """Render :func:`list_layers` rows as a plain-text table.

    ``max_depth`` keeps names with at most that many dotted parts (``1``: direct
    children only); the net's output row is always kept.

    Example:
        >>> import torchvision
        >>> print(format_layers(list_layers(torchvision.models.resnet18(), 32), max_depth=1))  # doctest: +ELLIPSIS
        hidden_layer ...
        avgpool [-2] ...
    """
    header = ("hidden_layer", "type", "output shape", "representation", "pooling")
    lines = []
    for row in rows:
        name = row["name"]
        if name is not None and max_depth is not None and name.count(".") + 1 > max_depth:
            continue
        label = "-1 (output)" if name is None else name
        if name is not None and row.get("child_index") is not None:
            label += f" [{row['child_index']}]"
        pooling = row["pooling"] + (f"; runs {row['calls']}x, first call used" if row.get("calls", 1) > 1 else "")
        size = "-" if row["representation_size"] is None else str(row["representation_size"])
        shape = "(" + ", ".join(str(s) for s in row["output_shape"]) + ")"
        lines.append((label, row["type"], shape, size, pooling))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths)) + "  " + line[-1]
        for line in [header, *lines]
    )


def print_layers(
    net: nn.Module,
    image_size: Union[int, Sequence[int], None] = None,
    input_shape: Optional[Sequence[int]] = None,
    token_pool: str = "auto",
    max_depth: Optional[int] = None,
) -> None:
    """Print the candidate hidden layers of ``net`` as a table (see :func:`list_layers`).

    The first column is what to pass as ``hidden_layer``; ``[-2]`` marks the child index
    that selects the same module.

    Example:
        >>> import torchvision
        >>> print_layers(torchvision.models.resnet18(), 32, max_depth=1)  # doctest: +ELLIPSIS
        hidden_layer ...
    """
    print(format_layers(list_layers(net, image_size, input_shape, token_pool), max_depth))
