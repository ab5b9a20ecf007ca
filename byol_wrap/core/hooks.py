"""Take a representation from any layer of a network through a temporary forward hook.

The hook lives only for the duration of one forward pass, so wrapping a net twice never
stacks hooks, ``copy.deepcopy`` of a net or learner copies no stale hook, and nothing is
left on the user's module afterwards. It acts only in the thread that registered it: the
same net called from another thread meanwhile runs as if it were not there. When the
representation comes from an inner layer, the forward stops as soon as that layer has run
("early exit"): the layers after it are not computed, and the result is the same tensor
the full forward would have produced.
"""
from __future__ import annotations

import difflib
import threading
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .pooling import Pooling, check_token_pool

LayerSpec = Union[str, int, None]


class HiddenLayerNotRunError(RuntimeError):
    """The chosen hidden layer did not run during the net's forward pass."""


class UnknownLayerError(ValueError):
    """``hidden_layer`` names no module of the net, or a child index out of range."""


class AmbiguousOutputError(ValueError):
    """The net's output (``hidden_layer=-1``) is a tuple or list of several tensors."""


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
    is_int = isinstance(hidden_layer, int) and not isinstance(hidden_layer, bool)
    if hidden_layer is None or (is_int and hidden_layer == -1):
        return None
    if isinstance(hidden_layer, bool) or not isinstance(hidden_layer, (int, str)):
        raise TypeError(
            f"hidden_layer must be a module name (str), a child index (int) or None, got "
            f"{type(hidden_layer).__name__}"
        )
    if isinstance(hidden_layer, int):
        children = [name for name, _ in net.named_children()]
        if not -len(children) <= hidden_layer < len(children):
            raise UnknownLayerError(
                f"hidden_layer={hidden_layer} is out of range: the net has {len(children)} children "
                f"({', '.join(children)}). Use an index in [{-len(children)}, {len(children) - 1}], "
                f"a dotted module name, or -1 for the net's output."
            )
        return children[hidden_layer]
    names = [name for name, _ in net.named_modules() if name]
    if hidden_layer not in names:
        close = difflib.get_close_matches(hidden_layer, names, n=5, cutoff=0.4)
        hint = f"Closest names: {', '.join(close)}. " if close else ""
        raise UnknownLayerError(
            f"hidden_layer {hidden_layer!r} is not a module of {type(net).__name__}. {hint}"
            f"byol_wrap.print_layers(net, image_size) prints every candidate with its output shape and "
            f"representation size (byol_wrap.list_layers returns them as dicts)."
        )
    return hidden_layer


def first_tensor(output: Any, where: str) -> Tensor:
    """``output`` if it is a tensor, else the first element of a tuple/list of tensors.

    Raises:
        TypeError: naming ``where`` for anything else.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"{where} returned {type(output).__name__}, not a tensor; choose a hidden_layer whose "
        f"output is a tensor (see byol_wrap.list_layers)"
    )


def describe_elements(output: Sequence[Any]) -> str:
    """``[0] Tensor (2, 10), [1] Tensor (2, 512)``: what a tuple/list output holds."""
    return ", ".join(
        f"[{i}] Tensor {tuple(e.shape)}" if isinstance(e, Tensor) else f"[{i}] {type(e).__name__}"
        for i, e in enumerate(output)
    )


def net_output(output: Any, net: nn.Module, pool_fn: Optional[Callable[..., Tensor]]) -> Any:
    """The net's own output as the representation source (``hidden_layer=-1``).

    A tensor passes; a tuple/list passes whole to ``pool_fn`` when one is given, and
    gives its only tensor otherwise. Several tensors are ambiguous (e.g. ``(logits,
    features)``): :class:`AmbiguousOutputError` lists them and how to choose.
    """
    if isinstance(output, Tensor) or pool_fn is not None:
        return output
    if isinstance(output, (tuple, list)):
        tensors = [e for e in output if isinstance(e, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        if len(tensors) > 1:
            second = next(i for i, e in enumerate(output) if isinstance(e, Tensor) and e is tensors[1])
            raise AmbiguousOutputError(
                f"{type(net).__name__}.forward returned a {type(output).__name__} of {len(output)} elements: "
                f"{describe_elements(output)}; with hidden_layer=-1 it is unclear which is the representation. "
                f"Choose it: hidden_layer=<the module that produces it> (byol_wrap.print_layers(net, image_size) "
                f"lists the candidates), or pool_fn=lambda out: out[{second}] (pool_fn receives the whole "
                f"{type(output).__name__}; reduce to (N, D) there if needed)."
            )
    return first_tensor(output, f"{type(net).__name__}.forward")


class RepresentationExtractor:
    """Run ``net`` and return the (pooled) output of one of its layers.

    A plain object (not a module) holding only the layer's name and how to pool, so one
    extractor serves the online net and its target copy alike.

    Args:
        layer: dotted module name from :func:`resolve_layer`, or ``None`` for the output.
        token_pool: ``"cls"``/``"mean"``/``"spatial"``/``"auto"`` pooling for 3-D token outputs.
        pool_fn: a callable replacing the default pooling entirely.
        early_exit: stop the forward once ``layer`` has produced its output.
        pooling: the pooling resolved for the net (:meth:`Pooling.for_net`); ``None``:
            resolved from ``token_pool`` and the net at every call.

    Raises:
        HiddenLayerNotRunError: (at call time) when ``layer`` does not run in the forward.

    Example:
        >>> import torch, torchvision
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
        pooling: Optional[Pooling] = None,
    ) -> None:
        check_token_pool(token_pool)
        self.layer = layer
        self.token_pool = token_pool
        self.pool_fn = pool_fn
        self.early_exit = early_exit
        self.pooling = pooling

    def raw(self, net: nn.Module, x: Tensor) -> Any:
        """The layer's output before pooling (for ``layer=None`` with ``pool_fn``: the net's
        output as returned, a tuple included, so that ``pool_fn`` can pick from it)."""
        if self.layer is None:
            return net_output(net(x), net, self.pool_fn)
        captured: List[Tensor] = []
        early_exit = self.early_exit
        owner = None if torch.compiler.is_compiling() else threading.get_ident()

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            # the hook is on the user's module while this forward runs: the same net called in
            # another thread meanwhile (the user's own net(x), another learner) must not see it
            if owner is not None and threading.get_ident() != owner:
                return
            if not captured:
                tensor = first_tensor(output, f"layer {self.layer!r}")
                # without early exit the forward goes on, and an in-place op after the layer
                # (ReLU(inplace=True)) would change what was read: keep a copy
                captured.append(tensor if early_exit else tensor.clone())
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
            raise HiddenLayerNotRunError(
                f"hidden layer {self.layer!r} never ran during the forward pass of "
                f"{type(net).__name__}; choose a layer that the forward uses (see byol_wrap.list_layers)"
            )
        return captured[0]

    def __call__(self, net: nn.Module, x: Tensor) -> Tensor:
        out = self.raw(net, x)
        if self.pool_fn is not None:
            return self.pool_fn(out)
        pooling = self.pooling if self.pooling is not None else Pooling.for_net(net, self.token_pool)
        return pooling(out)


# Names that lived here before pooling.py, probe.py and layers.py took them over: old name -> new module.
_MOVED = {
    **dict.fromkeys(("pool", "prefix_token_count", "channels_last_outputs", "describe_pooling", "default_token_pool",
                     "TOKEN_POOLS"), "byol_wrap.core.pooling"),
    **dict.fromkeys(("infer_input_shape", "image_size_pair", "module_device_dtype", "cuda_rng_devices",
                     "probe_context"), "byol_wrap.core.probe"),
    **dict.fromkeys(("list_layers", "format_layers", "print_layers"), "byol_wrap.core.layers"),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"byol_wrap.core.hooks.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'byol_wrap.core.hooks' has no attribute {name!r}")
