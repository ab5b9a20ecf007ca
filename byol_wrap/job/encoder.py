"""The trained encoder: export it (``encoder.pt``), load it back as a module, embed images with it.

``encoder.pt`` is ``{"state_dict": <backbone state_dict>, "meta": {...}}`` written atomically
and loadable with ``torch.load(path, weights_only=True)``. ``meta`` holds ``format``
(``"byol-wrap-encoder"``), ``format_version``, ``model_spec``, ``hidden_layer`` (the resolved
module name, ``None`` for the net's output), ``token_pool``, ``image_size``, ``normalize``
(``[mean, std]`` or ``None``), ``representation_size``, ``steps``, ``byol_wrap_version`` and
whatever ``extra`` adds.

API:
    export_encoder(net, path, *, model_spec, hidden_layer, image_size, normalize,
                   representation_size, steps, extra=None, token_pool="auto") -> Path
    load_encoder(path, device="cpu", model=None) -> Encoder   (eval mode; images -> representations;
                                                               built-in specs only unless model= is given)
    embed_images(encoder_path, data, out_file, batch_size=256, workers=None, ...) -> Path  (.npz or .csv)

Example:
    >>> import tempfile
    >>> from byol_wrap.job.models import small_cnn
    >>> path = export_encoder(small_cnn(8), tempfile.mkdtemp() + "/encoder.pt", model_spec="byol_wrap/small_cnn:8",
    ...                       hidden_layer=-1, image_size=32, normalize=None, representation_size=64, steps=0)
    >>> load_encoder(path)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape
    torch.Size([2, 64])
"""
from __future__ import annotations

import csv
import io as _io
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..core.augment import ChannelNormalize, to_float_images
from ..core.hooks import RepresentationExtractor, resolve_layer
from .io import UnreadableFileError, atomic_save, atomic_write, load_torch_file

FORMAT = "byol-wrap-encoder"
FORMAT_VERSION = 1
LayerSpec = Union[str, int, None]

__all__ = ["Encoder", "export_encoder", "load_encoder", "embed_images", "FORMAT"]


def _unwrap(net: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            net = net.module
        elif isinstance(getattr(net, "_orig_mod", None), nn.Module):
            net = net._orig_mod  # type: ignore[assignment]
        else:
            return net


def _plain(value: Any, where: str) -> Any:
    """Check that ``value`` survives ``torch.load(weights_only=True)``: None/bool/int/float/str,
    lists/tuples and str-keyed dicts of those."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: dict keys must be str")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"{where} must hold only None, bool, int, float, str, lists and dicts, got "
                    f"{type(value).__name__}")


def _normalize_meta(normalize: Any) -> Optional[List[List[float]]]:
    if normalize is None:
        return None
    try:
        mean, std = normalize
        return [[float(v) for v in torch.as_tensor(mean).flatten()], [float(v) for v in torch.as_tensor(std).flatten()]]
    except (TypeError, ValueError) as error:
        raise ValueError(f"normalize must be None or (mean, std), got {normalize!r}") from error


_FROM_LEARNER: Any = object()


def _learner_fields(learner: Any) -> Dict[str, Any]:
    """What a BYOL learner knows about its backbone: net, hidden layer, pooling, normalisation, sizes."""
    normalizer = getattr(learner, "normalizer", None)
    normalize = None
    if normalizer is not None:
        normalize = (normalizer.mean.tolist(), normalizer.std.tolist())
    extractor = learner.extractor
    if extractor.pool_fn is not None:
        warnings.warn("the learner uses a custom pool_fn, which encoder.pt cannot record: load_encoder will pool "
                      "the hidden layer's output by token_pool instead", stacklevel=3)
    shape = tuple(learner.input_shape)
    image_size: Any = shape[1] if len(shape) == 3 and shape[1] == shape[2] else list(shape[1:])
    return {"net": learner.net, "hidden_layer": extractor.layer, "token_pool": extractor.token_pool,
            "normalize": normalize, "image_size": image_size,
            "representation_size": int(learner.representation_size)}


def export_encoder(
    net: nn.Module,
    path: Union[str, Path],
    *,
    model_spec: Any = None,
    hidden_layer: LayerSpec = _FROM_LEARNER,
    image_size: Union[int, Sequence[int]] = _FROM_LEARNER,
    normalize: Any = _FROM_LEARNER,
    representation_size: int = _FROM_LEARNER,
    steps: int = 0,
    extra: Optional[Dict[str, Any]] = None,
    token_pool: str = _FROM_LEARNER,
    model: Any = None,
) -> Path:
    """Write ``encoder.pt``: the backbone's ``state_dict`` (on CPU) and its metadata, atomically.

    Args:
        net: the trained backbone (DDP / ``torch.compile`` wrappers are removed), or a BYOL
            learner: then its ``net`` is saved and every argument left out below is read from it.
        path: the file to write (its folder must exist).
        model_spec: the spec that rebuilds ``net`` (``"torchvision/resnet18"``...), or ``None``
            / an ``nn.Module`` for a module that only its author can rebuild
            (``load_encoder(path, model=...)``). ``model`` is an alias.
        hidden_layer: as given to BYOL; stored resolved to a module name (``None``: output).
        image_size: the training view size; ``normalize``: ``(mean, std)`` or ``None``.
        representation_size, steps: recorded as they are; ``extra``: more plain metadata.
        token_pool: BYOL's ``token_pool`` for 3-D (token) outputs (default ``"auto"``).

    Example:
        >>> import tempfile
        >>> from byol_wrap.job.models import small_cnn
        >>> p = export_encoder(small_cnn(8), tempfile.mkdtemp() + "/e.pt", model_spec="byol_wrap/small_cnn:8",
        ...                    hidden_layer=-1, image_size=32, normalize=None, representation_size=64, steps=5)
        >>> torch.load(p, weights_only=True)["meta"]["steps"]
        5
    """
    from .. import __version__
    from .models import spec_name

    if model_spec is None and model is not None:
        model_spec = model
    model_spec = spec_name(model_spec) if model_spec is not None else None
    net = _unwrap(net)
    if hasattr(net, "extractor") and hasattr(net, "net") and hasattr(net, "input_shape"):  # a BYOL learner
        fields = _learner_fields(net)
        net = fields["net"]
        hidden_layer = fields["hidden_layer"] if hidden_layer is _FROM_LEARNER else hidden_layer
        image_size = fields["image_size"] if image_size is _FROM_LEARNER else image_size
        normalize = fields["normalize"] if normalize is _FROM_LEARNER else normalize
        token_pool = fields["token_pool"] if token_pool is _FROM_LEARNER else token_pool
        if representation_size is _FROM_LEARNER:
            representation_size = fields["representation_size"]
    missing = [name for name, value in (("hidden_layer", hidden_layer), ("image_size", image_size),
                                        ("normalize", normalize), ("representation_size", representation_size))
               if value is _FROM_LEARNER]
    if missing:
        raise TypeError(f"export_encoder needs {', '.join(missing)} for a backbone (only a BYOL learner "
                        f"supplies them itself)")
    token_pool = "auto" if token_pool is _FROM_LEARNER else token_pool
    layer = resolve_layer(net, hidden_layer)
    meta: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": model_spec,
        "model_class": f"{type(net).__module__}.{type(net).__qualname__}",
        "hidden_layer": layer,
        "token_pool": token_pool,
        "image_size": _plain(list(image_size) if not isinstance(image_size, int) else image_size, "image_size"),
        "normalize": _normalize_meta(normalize),
        "representation_size": int(representation_size),
        "steps": int(steps),
        "byol_wrap_version": __version__,
    }
    if extra:
        clash = sorted(set(extra) & set(meta))
        if clash:
            raise ValueError(f"extra metadata must not overwrite {', '.join(clash)}")
        meta.update(_plain(dict(extra), "extra"))
    state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    return atomic_save({"state_dict": state, "meta": meta}, path)


class Encoder(nn.Module):
    """A trained backbone as a function of images: ``(N, C, H, W)`` uint8 (divided by 255), uint16
    (divided by the run's full intensity, ``meta["pixel_format"]["scale"]``) or float (as the run
    saw them: ``x / scale``) -> ``(N, representation_size)``; the training normalisation (the run's
    per-channel statistics, or ImageNet's for 8-bit RGB), hidden layer and pooling are applied.
    ``meta`` is the encoder file's metadata (``channels`` and ``pixel_format`` for runs that record them).

    Example:
        >>> from byol_wrap.job.models import small_cnn
        >>> enc = Encoder(small_cnn(8), None, normalize=None).eval()
        >>> enc(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 64])
    """

    def __init__(self, net: nn.Module, hidden_layer: Optional[str], normalize: Any = None,
                 token_pool: str = "auto", meta: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.net = net
        self.normalizer = ChannelNormalize(*normalize) if normalize is not None else None
        self.extractor = RepresentationExtractor(hidden_layer, token_pool=token_pool)
        self.meta: Dict[str, Any] = dict(meta or {})

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint16:  # 16-bit samples: divided by the run's full intensity
            fmt = self.meta.get("pixel_format") or {}
            x = images.to(torch.float32).div_(float(fmt.get("scale", 65535.0)))
        else:
            x = to_float_images(images)
        dtype = next((p.dtype for p in self.net.parameters() if p.is_floating_point()), x.dtype)
        if self.normalizer is not None:
            x = self.normalizer(x)
        return self.extractor(self.net, x.to(dtype))

    @property
    def image_size(self) -> Any:
        return self.meta.get("image_size")

    def preprocess(self, images: Any, normalize: bool = False) -> Tensor:
        """``embed``'s preprocessing of paths, a folder, PIL images, arrays or tensors: images in the
        encoder's pixel format (``meta["pixel_format"]``: its channels and sample type; uint8 RGB when
        it records none) at :attr:`image_size`, the input of ``self(...)``; ``normalize=True``: the
        float input of ``self.net`` (see :func:`byol_wrap.job.preprocess.preprocess`).

        Example:
            >>> vectors = encoder(encoder.preprocess(["a.jpg", "b.png"]))   # doctest: +SKIP
        """
        from .data.channels import meta_pixel_format
        from .preprocess import preprocess

        statistics = self.meta.get("normalize") if normalize else None
        fmt = meta_pixel_format(self.meta)
        batch = preprocess(images, self.image_size, normalize=statistics, fmt=fmt)
        if normalize and statistics is None:  # trained without normalisation: the net takes x / scale
            batch = batch.float().div_(float(fmt.scale)) if fmt is not None and batch.dtype == torch.uint16 else \
                to_float_images(batch)
        return batch.to(self._device())

    def _device(self) -> torch.device:
        return next((p.device for p in self.net.parameters()), torch.device("cpu"))

    def extra_repr(self) -> str:
        return (f"model_spec={self.meta.get('model_spec')!r}, hidden_layer={self.extractor.layer!r}, "
                f"image_size={self.image_size!r}")


def _read_encoder_file(path: Path) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    from .export_formats import is_safetensors, read_safetensors

    if is_safetensors(path):  # byol-wrap export --format safetensors
        state, meta = read_safetensors(path)
    else:
        state, meta = _read_torch_encoder(path)
    if meta.get("format") != FORMAT:
        raise UnreadableFileError(f"{path} is not a byol-wrap encoder file; give the encoder.pt a byol-wrap run wrote")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise RuntimeError(f"{path} was written by a newer byol-wrap ({meta.get('byol_wrap_version')}); upgrade "
                           f"byol-wrap to load it")
    return state, meta


def _read_torch_encoder(path: Path) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    obj = load_torch_file(path, "encoder", hint="export it again with: byol-wrap export RUN_DIR")
    meta = obj.get("meta") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(obj.get("state_dict"), dict):
        looks_like_checkpoint = isinstance(obj, dict) and ("optimizer" in obj or "learner" in obj)
        hint = ("it looks like a training checkpoint: make the encoder with byol-wrap export RUN_DIR"
                if looks_like_checkpoint else "give the encoder.pt a byol-wrap run wrote")
        raise UnreadableFileError(f"{path} is not a byol-wrap encoder file; {hint}")
    return obj["state_dict"], meta


def load_encoder(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                 model: Union[nn.Module, str, None] = None, how: Optional[str] = None) -> Encoder:
    """Rebuild the encoder an ``encoder.pt`` (or ``encoder.safetensors``) describes, in eval mode on ``device``.

    A file never decides which code runs: from the spec the file records, only the built-in families
    (``torchvision/``, ``timm/``, ``byol_wrap/``) are rebuilt, nothing downloaded. For any other network
    pass ``model=``: a freshly built instance of the same architecture, or a spec string of your own
    (``"my_nets.py:make"``: that code runs, because you named it); its weights are then loaded into it.

    Raises:
        FileNotFoundError: a missing file.
        RuntimeError: a truncated or foreign file.
        UntrustedSpecError: (a ValueError) the file records a spec outside the built-in families
            (nothing imported; asks for ``model=``).
        RuntimeError: a built-in spec that cannot be built here (timm missing...; asks for ``model=``).
        ValueError: weights that do not fit ``model`` (listing the keys).

    Example:
        >>> enc = load_encoder("run/encoder.pt")                     # doctest: +SKIP
        >>> features = enc(images)  # (N, 3, H, W) uint8 or float in [0, 1]  # doctest: +SKIP
        >>> enc = load_encoder("run/encoder.pt", model=MyNet())      # doctest: +SKIP
    """
    from .models import load_state_dict_checked
    from .rebuild import UntrustedSpecError, rebuild_recorded

    path = Path(path)
    state, meta = _read_encoder_file(path)
    how = how or "pass model=<a new instance of the same architecture>: load_encoder(path, model=net)"
    image_size = meta.get("image_size")
    side = image_size if isinstance(image_size, int) else (image_size[0] if image_size else None)
    try:
        net = rebuild_recorded(meta.get("model_spec"), f"encoder {path}", side, model, how,
                               channels=int(meta.get("channels") or 3))
    except UntrustedSpecError:
        raise
    except (ImportError, ValueError, TypeError, FileNotFoundError, AttributeError) as error:
        if model is not None:
            raise
        raise RuntimeError(f"encoder {path}: cannot rebuild model spec {meta.get('model_spec')!r} here ({error}); "
                           f"{how}") from error
    load_state_dict_checked(net, state, f"encoder weights in {path}")
    encoder = Encoder(net, meta.get("hidden_layer"), meta.get("normalize"), meta.get("token_pool", "auto"), meta)
    return encoder.to(device).eval()


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
        except ImportError:
            pass

    class _Quiet:
        def update(self, n: int = 1) -> None:
            pass

        def set_postfix_str(self, text: str) -> None:
            pass

        def close(self) -> None:
            pass

    return _Quiet()


def embed_images(
    encoder_path: Union[str, Path],
    data: Any,
    out_file: Union[str, Path],
    batch_size: int = 256,
    workers: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    strict: bool = False,
    progress: bool = True,
    model: Union[nn.Module, str, None] = None,
    how: Optional[str] = None,
) -> Path:
    """Embed every readable image of ``data`` and write one row per image, atomically.

    ``data`` is anything :func:`byol_wrap.job.data.open_images` takes (a folder, a ``.npz``,
    ``"digits"``, a Dataset). Images are decoded at ``image_size x 8/7`` and centre-cropped to
    the encoder's ``image_size`` (see :func:`byol_wrap.job.data.eval_images`). ``out_file`` ending
    in ``.npz`` gets ``paths`` (a unicode array; no pickle) and ``embeddings`` (float32
    ``(N, D)``); ``.csv`` gets a header ``path,e0,...,e{D-1}``. Unreadable files are left out
    with a warning (``strict=True``: the first one raises). ``model``: as for :func:`load_encoder`.

    Example:
        >>> embed_images("run/encoder.pt", "photos/", "embeddings.npz")  # doctest: +SKIP
    """
    from .data import default_load_size, eval_images, make_loader, open_images
    from .data.channels import meta_pixel_format

    out_file = Path(out_file)
    suffix = out_file.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise ValueError(f"the output file must end in .npz or .csv, got {out_file.name!r}")
    if not out_file.parent.is_dir():
        raise FileNotFoundError(f"cannot write {out_file}: the folder {out_file.parent} does not exist")
    encoder = load_encoder(encoder_path, device, model=model, how=how)
    image_size = encoder.meta["image_size"]
    size = image_size if isinstance(image_size, int) else tuple(image_size)
    fmt = meta_pixel_format(encoder.meta)
    dataset = open_images(data, default_load_size(size), strict=strict, fmt=fmt)
    loader = make_loader(dataset, min(batch_size, len(dataset)), workers=workers, drop_last=False,  # type: ignore[arg-type]
                         shuffle=False, strict=strict, pin_memory=torch.device(device).type == "cuda",
                         continuous=False)
    describe = getattr(dataset, "describe", lambda i: f"dataset[{i}]")
    paths: List[str] = []
    chunks: List[Tensor] = []
    skipped: List[Tuple[str, str]] = list(getattr(dataset, "scan_skipped", []))  # folders not read, links not followed
    bar = _progress(len(dataset), progress, "embed")  # type: ignore[arg-type]
    try:
        with torch.inference_mode():
            for batch in loader:
                skipped += batch.skipped
                if len(batch.images):
                    x = eval_images(batch.images, size).to(device, non_blocking=True)
                    chunks.append(encoder(x).float().cpu())
                    paths += [describe(i) for i in batch.indices.tolist()]
                bar.update(len(batch.images) + len(batch.skipped))
                if skipped:
                    bar.set_postfix_str(f"skipped {len(skipped)}")
    finally:
        bar.close()
        loader.close()
    dim = int(encoder.meta.get("representation_size") or 0)
    embeddings = torch.cat(chunks) if chunks else torch.empty((0, dim))
    if not paths:
        example = f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ValueError(f"no readable image in {data}: {len(skipped)} file(s) could not be decoded{example}")
    if skipped:
        warnings.warn(f"embed: {len(skipped)} unreadable image(s) left out, e.g. {skipped[0][0]}: {skipped[0][1]}",
                      stacklevel=2)
    if suffix == ".npz":
        import numpy as np

        array_paths = np.array(paths, dtype=str) if paths else np.zeros(0, dtype="<U1")
        atomic_write(out_file, lambda f: np.savez(f, paths=array_paths, embeddings=embeddings.numpy()))
    else:
        def write_csv(handle: Any) -> None:
            text = _io.TextIOWrapper(handle, encoding="utf-8", newline="")
            writer = csv.writer(text)
            writer.writerow(["path"] + [f"e{i}" for i in range(embeddings.shape[1])])
            for name, row in zip(paths, embeddings.tolist()):
                writer.writerow([name] + [repr(v) for v in row])
            text.flush()
            text.detach()

        atomic_write(out_file, write_csv)
    return out_file
