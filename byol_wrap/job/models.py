"""Model specs for the job layer: build a backbone from a short string, pick its hidden layer.

Specs:
    ``torchvision/<name>``       ``torchvision.models.get_model(name, weights=None)`` (ViTs get ``image_size``)
    ``timm/<name>``              ``timm.create_model(name, pretrained=False, num_classes=0)`` (``img_size``
                                 passed when the model takes it); timm is optional (``byol-wrap[train]``)
    ``byol_wrap/small_cnn``      :func:`small_cnn`, a small CNN for CPU runs (``byol_wrap/small_cnn:32`` sets
                                 its width)
    ``<module or file.py>:<callable>``  your own constructor, called without arguments: a spec you give
                                 imports and runs that code, as ``python file.py`` would (a spec read
                                 from a file never does: see :mod:`byol_wrap.job.rebuild`)

Nothing is ever downloaded: every net starts from random weights, or from a local state_dict
given as ``weights`` (continued pretraining of an ImageNet network on domain images).

API:
    small_cnn(width=16) -> nn.Sequential
    build_model(spec, weights=None, image_size=None) -> nn.Module
    default_hidden_layer(spec, net) -> str | int
    load_weights(net, path) -> None
    spec_name(spec) -> str | None      the string to record in checkpoints (None for an nn.Module)

Example:
    >>> net = build_model("byol_wrap/small_cnn")
    >>> default_hidden_layer("byol_wrap/small_cnn", net)
    -1
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .input_channels import adapt_state_dict, rebuild_first_conv
from .io import load_torch_file

Spec = Union[str, nn.Module]
TRAIN_EXTRA = 'pip install "byol-wrap[train]"'
SPEC_FORMS = ("torchvision/<name> (e.g. torchvision/resnet18)", "timm/<name>", "byol_wrap/small_cnn",
              "<module or file.py>:<callable>")

__all__ = ["small_cnn", "build_model", "default_hidden_layer", "load_weights", "load_state_dict_checked", "spec_name",
           "SPEC_FORMS"]


def small_cnn(width: int = 16, in_channels: int = 3) -> nn.Sequential:
    """Four conv-BN-ReLU blocks (3x3, the first with stride 1, the others stride 2), global
    average pool and flatten: a ``8 * width``-d representation (``hidden_layer=-1``).

    Channels ``[in_channels, w, 2w, 4w, 8w]``; convolutions have no bias (BatchNorm follows).

    Example:
        >>> small_cnn(8)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 64])
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"small_cnn width must be a positive int, got {width!r}")
    layers: List[nn.Module] = []
    channels = [in_channels, width, 2 * width, 4 * width, 8 * width]
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        layers += [nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"timm models need the training extras: {TRAIN_EXTRA}") from error
    return timm


def _unknown(kind: str, name: str, names: Sequence[str], spec_prefix: str) -> ValueError:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(spec_prefix + c for c in close)}" if close else ""
    return ValueError(f"unknown {kind} model {name!r}{hint}")


def _build_torchvision(name: str, image_size: Optional[int]) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise _unknown("torchvision", name, names, "torchvision/")
    kwargs: Dict[str, Any] = {}
    if name.startswith("vit_") and image_size is not None:
        kwargs["image_size"] = int(image_size)
    net: nn.Module = torchvision.models.get_model(name, weights=None, **kwargs)
    return net


def _build_timm(name: str, image_size: Optional[int], channels: int = 3) -> nn.Module:
    timm = _import_timm()
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models(), "timm/")
    headless: nn.Module = timm.create_model(name, pretrained=False, num_classes=0, in_chans=channels)
    if image_size is not None and "img_size" in inspect.signature(type(headless).__init__).parameters:
        # a model with a fixed input size (ViT-like: position embeddings): build it for the views' size
        sized: nn.Module = timm.create_model(name, pretrained=False, num_classes=0, img_size=int(image_size),
                                             in_chans=channels)
        return sized
    return headless


def _import_callable(spec: str) -> Any:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"model spec {spec!r} needs the form <module or file.py>:<callable>")
    if target.endswith(".py") or Path(target).is_file():
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"model spec {spec!r}: the file {path} does not exist")
        module_name = f"byol_wrap_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"model spec {spec!r}: cannot import {path} as a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # so pickling and DataLoader workers can find its classes
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            raise ValueError(f"model spec {spec!r}: cannot import module {target!r} ({error}); give an "
                             f"importable module or a path to a .py file") from error
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=5, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise ValueError(f"model spec {spec!r}: {target} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"model spec {spec!r}: {attr} is not callable")
    return obj


def _build(spec: str, image_size: Optional[int], channels: int = 3, notes: Optional[List[str]] = None) -> nn.Module:
    family, slash, name = spec.partition("/")
    if slash and ":" not in spec:
        if family == "torchvision":
            net = _build_torchvision(name, image_size)
            if channels != 3:
                line = rebuild_first_conv(net, channels)
                if notes is not None:
                    notes.append(f"model: {line}")
            return net
        if family == "timm":
            return _build_timm(name, image_size, channels)
        if family == "byol_wrap":
            base, _, width = name.partition(":")
            if base != "small_cnn":
                raise _unknown("byol_wrap", base, ["small_cnn"], "byol_wrap/")
            return small_cnn(int(width), channels) if width else small_cnn(in_channels=channels)
    if family == "byol_wrap" and ":" in name:  # byol_wrap/small_cnn:32
        base, _, width = name.partition(":")
        if base == "small_cnn" and width.isdigit():
            return small_cnn(int(width), channels)
    if ":" in spec:
        constructor = _import_callable(spec)
        try:
            net = constructor()
        except SystemExit as error:  # sys:exit, exit:... would end the command with nothing written
            raise TypeError(f"model spec {spec!r} ended the program (SystemExit {error.code!r}) instead of "
                            f"returning a torch.nn.Module") from None
        if not isinstance(net, nn.Module):
            raise TypeError(f"model spec {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
        return net
    hint = ""
    try:
        import torchvision

        if spec in torchvision.models.list_models():
            hint = f" (did you mean torchvision/{spec}?)"
    except Exception:  # pragma: no cover - torchvision is a core dependency
        pass
    raise ValueError(f"unknown model spec {spec!r}{hint}; use one of: {'; '.join(SPEC_FORMS)}")


def build_model(spec: Spec, weights: Union[str, Path, None] = None, image_size: Optional[int] = None,
                channels: int = 3, notes: Optional[List[str]] = None) -> nn.Module:
    """Build the backbone a spec names (random initialisation, nothing downloaded).

    Args:
        spec: a spec string (see the module docstring) or an ``nn.Module`` (returned as it is).
        weights: a local ``state_dict`` file (``torch.save(net.state_dict())``, a byol-wrap
            ``encoder.pt``, or a dict with a ``"state_dict"``/``"model"`` entry) loaded with
            ``weights_only=True``; see :func:`load_weights`.
        image_size: the training image side; passed to ViTs (torchvision ``image_size``,
            timm ``img_size``), which are built for one size. Other nets ignore it.
        channels: input channels: ``torchvision/`` networks get their first convolution
            rebuilt for them (:func:`~byol_wrap.job.input_channels.rebuild_first_conv`), ``timm/``
            ones ``in_chans``, ``small_cnn`` its ``in_channels``; your own module is built as it is
            (the learner's probe then checks that it takes them). RGB ``weights`` are adapted to them.
        notes: a list that gets one line for each such change (for the run's log).

    Raises:
        ValueError: an unknown spec or model name (with close names), weights that do not fit.
        ImportError: ``timm/...`` without timm installed (one line naming the extra).

    Example:
        >>> build_model("torchvision/resnet18").fc.out_features
        1000
    """
    if isinstance(spec, nn.Module):
        net = spec
    elif isinstance(spec, str):
        net = _build(spec.strip(), image_size, channels, notes)
    else:
        raise TypeError(f"model must be a spec string or a torch.nn.Module, got {type(spec).__name__}")
    if weights is not None:
        load_weights(net, weights, notes)
    return net


def spec_name(spec: Spec) -> Optional[str]:
    """The spec string to record (``None`` for an ``nn.Module``, which cannot be rebuilt from a name)."""
    return spec.strip() if isinstance(spec, str) else None


def _torchvision_hidden_layer(name: str, net: nn.Module) -> Union[str, int]:
    if name.startswith("vit_"):
        return "encoder"  # class token after the encoder's final LayerNorm
    if name.startswith("convnext"):
        return "classifier.1"  # after the head's LayerNorm2d: timm's pre-logits
    if name.startswith("swin"):
        return "flatten"
    if hasattr(net, "avgpool"):
        return "avgpool"
    if name.startswith(("densenet", "squeezenet")):
        return "features"
    if name.startswith("shufflenet"):
        return "conv5"
    return -2


def default_hidden_layer(spec: Spec, net: nn.Module) -> Union[str, int]:
    """The ``hidden_layer`` giving a family's pooled pre-logit features (the table in docs/backbones.md).

    ``byol_wrap/small_cnn``: ``-1``; ``timm/...`` (built with ``num_classes=0``): ``-1``;
    torchvision ResNet/ResNeXt/RegNet/MobileNet/EfficientNet/VGG: ``"avgpool"``, ViT:
    ``"encoder"``, ConvNeXt: ``"classifier.1"``, Swin: ``"flatten"``, DenseNet: ``"features"``;
    anything else (your own module): ``-2``, BYOL's default.

    Example:
        >>> default_hidden_layer("torchvision/resnet18", build_model("torchvision/resnet18"))
        'avgpool'
    """
    if not isinstance(spec, str):
        return -2
    family, slash, name = spec.strip().partition("/")
    if slash and family == "byol_wrap":
        return -1
    if slash and family == "timm":
        return -1
    if slash and family == "torchvision":
        return _torchvision_hidden_layer(name, net)
    return -2


def _classifier_prefixes(net: nn.Module) -> List[str]:
    """timm's classifier module names (``fc``, ``head``, ``head.fc``...) when the net was built without one."""
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, dict) else None
    if not names or getattr(net, "num_classes", None) != 0:
        return []
    return [names] if isinstance(names, str) else list(names)


def _extract_state_dict(obj: Any, path: Path) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj.get("format") == "byol-wrap-run":
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        raise ValueError(f"weights {path} is a byol-wrap run checkpoint, not a state_dict: to continue that run, "
                         f"run its own command again (--out {run_dir}); to start a new run from its network, pass "
                         f"its encoder: --weights {run_dir / 'encoder.pt'} (byol-wrap export {run_dir} writes it)")
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "encoder"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"weights {path} hold no state_dict (a dict of parameter names to tensors); save one "
                         f"with torch.save(net.state_dict(), path)")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _list(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(net: nn.Module, path: Union[str, Path], notes: Optional[List[str]] = None) -> None:
    """Load a local state_dict into ``net`` (``weights_only=True``; never downloads).

    A timm net built without classifier ignores the file's classifier weights (``fc.*``,
    ``head.*``); a ``module.`` prefix (a DDP checkpoint) is removed. An RGB first-convolution
    kernel is adapted to a net of other input channels as timm does
    (:func:`~byol_wrap.job.input_channels.adapt_rgb_kernel`; a line goes to ``notes``); a kernel
    of any other input count is refused. Any other difference raises a ValueError listing the
    missing, unexpected and wrongly shaped keys.

    Example:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/w.pt"
        >>> torch.save(small_cnn(8).state_dict(), path)
        >>> load_weights(small_cnn(8), path)
    """
    path = Path(path)
    state = _extract_state_dict(load_torch_file(path, "weights", hint="give a file saved with "
                                                "torch.save(net.state_dict(), path)"), path)
    state, note = adapt_state_dict(state, net, f"weights {path}")
    if note is not None and notes is not None:
        notes.append(note)
    load_state_dict_checked(net, state, f"weights {path}", ignore_prefixes=_classifier_prefixes(net))


def load_state_dict_checked(net: nn.Module, state: Dict[str, torch.Tensor], source: str,
                            ignore_prefixes: Sequence[str] = ()) -> None:
    """``net.load_state_dict(state)`` with one ValueError listing every missing, unexpected and
    wrongly shaped key (``source`` names the file in the message). Keys under
    ``ignore_prefixes`` that ``net`` lacks are dropped (a classifier the net was built without).

    Example:
        >>> load_state_dict_checked(small_cnn(8), small_cnn(8).state_dict(), "test")
    """
    own = net.state_dict()
    prefixes = tuple(p + "." for p in ignore_prefixes)
    if prefixes:
        state = {k: v for k, v in state.items() if k in own or not k.startswith(prefixes)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches (file vs model): {_list(shapes, 4)}")
        raise ValueError(f"{source} do not fit {type(net).__name__} ({'; '.join(parts)}); give the "
                         f"state_dict of the same architecture as the model spec")
    net.load_state_dict(state, strict=True)
