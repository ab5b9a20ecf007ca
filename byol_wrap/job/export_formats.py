"""``byol-wrap export RUN_DIR --format pt|safetensors|timm|onnx``: the encoder in the form the next tool reads.

- ``pt`` (default): ``encoder.pt``, ``{"state_dict", "meta"}`` for :func:`byol_wrap.load_encoder`.
- ``safetensors``: ``encoder.safetensors``, the backbone's tensors, with the metadata as JSON in the
  header (key ``byol_wrap``); :func:`byol_wrap.load_encoder` reads it like ``encoder.pt``.
- ``timm``: the backbone's ``state_dict`` as a plain ``.pth`` for the model's own library:
  ``timm/<name>`` specs: ``timm.create_model(name, num_classes=0, checkpoint_path=file)`` loads it with
  no missing key (``in_chans=C`` for an encoder of C != 3 channels); ``torchvision/<name>`` specs:
  ``torchvision.models.<name>().load_state_dict(sd, strict=False)`` misses only the classifier (the
  layers after the hidden layer, which BYOL never trained); for C != 3 channels rebuild the first
  convolution first (:func:`byol_wrap.job.input_channels.rebuild_first_conv`).
- ``onnx``: the embedding model (input normalisation, backbone up to the hidden layer, pooling), input
  ``images`` float32 ``(batch, C, H, W)``, output ``embeddings`` ``(batch, D)``, dynamic batch. The
  input is the encoder's float input: the samples divided by the run's full intensity (``x / scale``:
  8-bit by 255, 16-bit by ``meta["pixel_format"]["scale"]`` (65535, or ``2**bits - 1`` for files that
  declare fewer bits), float data as stored), i.e. in [0, 1] for integer images; the model's
  ``metadata_props`` record ``channels``, ``input_scale`` and ``pixel_format``. After export it is run
  with onnxruntime on a few images and compared with PyTorch: every output within :data:`ONNX_RTOL` x
  the largest output magnitude, else the export fails and nothing is written.
- ``safetensors`` and ``pt`` keep the whole metadata (``channels``, ``pixel_format``, the statistics).

Every file is written atomically and an existing file is refused unless ``overwrite=True``.

Example:
    >>> export("runs/digits", "onnx")                          # doctest: +SKIP
    PosixPath('runs/digits/encoder.onnx')
"""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union, cast

import torch
from torch import Tensor, nn

PathLike = Union[str, "os.PathLike[str]"]
FORMATS = ("pt", "safetensors", "timm", "onnx")
SAFETENSORS_KEY = "byol_wrap"
ONNX_RTOL = 1e-4
ONNX_OPSET = 17
EXPORT_EXTRA = 'pip install "byol-wrap[export]"'

__all__ = ["export", "FORMATS", "ONNX_RTOL", "save_safetensors", "read_safetensors", "is_safetensors",
           "library_state_dict", "export_onnx", "default_name"]


# ----------------------------------------------------------------------------- safetensors
def is_safetensors(path: PathLike) -> bool:
    """True when ``path`` starts like a safetensors file (an 8-byte header length, then a JSON object)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return bool(0 < length < os.path.getsize(path))


def _import_safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as error:
        raise ImportError(f"the safetensors format needs safetensors: {EXPORT_EXTRA}") from error
    return safetensors.torch


def save_safetensors(state: Dict[str, Tensor], meta: Dict[str, Any], path: PathLike) -> Path:
    """Write ``state`` with ``meta`` (JSON in the header) to ``path`` atomically."""
    from .io import atomic_write_bytes

    st = _import_safetensors()
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}  # no shared storage
    data = st.save(tensors, metadata={SAFETENSORS_KEY: json.dumps(meta), "format": "pt"})
    return atomic_write_bytes(path, data)


def read_safetensors(path: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """``(state_dict, meta)`` of an ``encoder.safetensors`` (no pickle; nothing in it runs code).

    Raises:
        UnreadableFileError: a safetensors file without byol-wrap's metadata, or a damaged one.
    """
    from .io import UnreadableFileError

    st = _import_safetensors()
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state = st.load_file(os.fspath(path))
    except Exception as error:  # damaged header or data
        raise UnreadableFileError(f"{path} is not a readable safetensors file: {error}") from error
    text = header.get(SAFETENSORS_KEY)
    try:
        meta = json.loads(text) if text else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise UnreadableFileError(f"{path} is a safetensors file without byol-wrap's metadata; give an "
                                  f"encoder.safetensors that byol-wrap export wrote")
    return state, meta


# ----------------------------------------------------------------------------- timm / torchvision
def _family(spec: Any) -> Tuple[str, str]:
    family, _, name = str(spec or "").partition("/")
    return family, name


def _channels(encoder: Any) -> int:
    """The encoder's input channels: as recorded (``meta["channels"]``), else its first convolution's, else 3."""
    from .input_channels import conv_channels

    return int(encoder.meta.get("channels") or conv_channels(encoder.net) or 3)


@torch.no_grad()
def _unused_parameters(encoder: Any) -> List[str]:
    """Names of the parameters the representation does not depend on (the classifier after the hidden layer)."""
    net = encoder.net
    named = [(n, p) for n, p in net.named_parameters()]
    image_size = encoder.meta.get("image_size") or 224
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = torch.rand(2, _channels(encoder), height, width, generator=torch.Generator().manual_seed(0))
    device = next((p.device for _, p in named), torch.device("cpu"))
    with torch.enable_grad():
        output = encoder(x.to(device))
        grads = torch.autograd.grad(output.float().sum(), [p for _, p in named], allow_unused=True)
    return [n for (n, _), g in zip(named, grads) if g is None]


def library_state_dict(encoder: Any) -> Tuple[Dict[str, Tensor], List[str]]:
    """The backbone's ``state_dict`` for its own library, and the keys left out.

    ``timm/`` specs (built with ``num_classes=0``): every key; ``torchvision/`` specs: every key but the
    classifier's (parameters the representation does not depend on). Other specs: a ValueError.
    """
    family, name = _family(encoder.meta.get("model_spec"))
    state = {k: v.detach().to("cpu").clone() for k, v in encoder.net.state_dict().items()}
    if family == "timm":
        return state, []
    if family == "torchvision":
        dropped = [k for k in _unused_parameters(encoder) if k in state]
        return {k: v for k, v in state.items() if k not in dropped}, dropped
    raise ValueError(f"--format timm is for timm/ and torchvision/ model specs (this encoder is "
                     f"{encoder.meta.get('model_spec')!r}); use --format pt or safetensors")


def _check_library_load(encoder: Any, path: Path, dropped: List[str]) -> None:
    """Load the written file the way the docs say and compare features with the encoder."""
    family, name = _family(encoder.meta.get("model_spec"))
    image_size = encoder.meta.get("image_size")
    side = image_size if isinstance(image_size, int) else (image_size[0] if image_size else None)
    channels = _channels(encoder)
    if family == "timm":
        import timm

        kwargs: Dict[str, Any] = {"num_classes": 0, "checkpoint_path": str(path), "in_chans": channels}
        try:
            net = timm.create_model(name, img_size=side, **kwargs)
        except TypeError:
            net = timm.create_model(name, **kwargs)
    else:
        import torchvision

        extra = {"image_size": side} if name.startswith("vit_") and side else {}
        net = torchvision.models.get_model(name, weights=None, **extra)
        if channels != 3:
            from .input_channels import rebuild_first_conv

            rebuild_first_conv(net, channels)
        result = net.load_state_dict(torch.load(path, weights_only=True), strict=False)
        if result.unexpected_keys or sorted(result.missing_keys) != sorted(dropped):
            raise RuntimeError(f"torchvision's {name} does not load {path} as expected (missing "
                               f"{result.missing_keys[:6]}, unexpected {result.unexpected_keys[:6]})")
    del net


# ----------------------------------------------------------------------------- onnx
class EmbeddingModel(nn.Module):
    """The encoder as one traceable function: float images ``x / scale`` (in [0, 1] for integer samples)
    -> representations."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.net = encoder.net
        self.normalizer = encoder.normalizer
        self.extractor = encoder.extractor

    def forward(self, images: Tensor) -> Tensor:
        x = images if self.normalizer is None else self.normalizer(images)
        out: Tensor = self.extractor(self.net, x)
        return out


def _onnx_check(data: bytes, model: nn.Module, image_size: Any, rtol: float, channels: int = 3) -> float:
    """Run the ONNX bytes with onnxruntime on 3 images and return the largest difference / magnitude."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"checking the ONNX export needs onnxruntime: {EXPORT_EXTRA}") from error
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = torch.rand(3, channels, height, width, generator=torch.Generator().manual_seed(0))  # 3: not the traced 2
    with torch.no_grad():
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        expected = model(x.to(device)).float().cpu()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    if got.shape != expected.shape:
        raise RuntimeError(f"the ONNX model returns shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    scale = float(expected.abs().max())
    difference = float((got - expected).abs().max()) / max(scale, 1e-30)
    if not difference <= rtol:
        raise RuntimeError(f"the ONNX model differs from PyTorch by {difference:.2e} of the largest output "
                           f"(allowed {rtol:g}); nothing written")
    return difference


def _with_metadata(data: bytes, encoder: Any) -> bytes:
    """The ONNX model with what its input means in ``metadata_props``: channels, the divisor of the samples
    (``input_scale``), the pixel format and the image size, as JSON strings."""
    import onnx

    fmt = encoder.meta.get("pixel_format") or {"channels": 3, "dtype": "uint8", "scale": 255.0}
    proto = onnx.load_from_string(data)
    props = {"byol_wrap.channels": str(_channels(encoder)),
             "byol_wrap.input_scale": json.dumps(float(fmt["scale"])), "byol_wrap.pixel_format": json.dumps(fmt),
             "byol_wrap.image_size": json.dumps(encoder.meta.get("image_size")),
             "byol_wrap.input": "float32 (batch, C, H, W): the samples divided by input_scale"}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return cast(bytes, proto.SerializeToString())


def export_onnx(encoder: Any, path: PathLike, *, rtol: float = ONNX_RTOL,
                opset: int = ONNX_OPSET) -> Tuple[Path, float]:
    """Write the encoder's embedding model as ONNX (checked with onnxruntime first); returns (path, error)."""
    from .io import atomic_write_bytes

    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise ImportError(f"the onnx format needs onnx and onnxruntime: {EXPORT_EXTRA}") from error
    model = EmbeddingModel(encoder).eval()
    image_size = encoder.meta.get("image_size")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    channels = _channels(encoder)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(1)).to(device)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, (example,), cast(Any, buffer), dynamo=False, input_names=["images"],
                          output_names=["embeddings"], opset_version=opset,
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    data = _with_metadata(buffer.getvalue(), encoder)
    difference = _onnx_check(data, model, image_size, rtol, channels)
    return atomic_write_bytes(path, data), difference


# ----------------------------------------------------------------------------- the command
def default_name(fmt: str, spec: Any = None) -> str:
    """``encoder.pt``, ``encoder.safetensors``, ``encoder_timm.pth`` / ``encoder_torchvision.pth``, ``encoder.onnx``.

    Example:
        >>> default_name("timm", "torchvision/resnet18")
        'encoder_torchvision.pth'
    """
    if fmt == "timm":
        return "encoder_torchvision.pth" if _family(spec)[0] == "torchvision" else "encoder_timm.pth"
    return {"pt": "encoder.pt", "safetensors": "encoder.safetensors", "onnx": "encoder.onnx"}[fmt]


def _encoder_of(source: Path, workdir: Path, model: Union[nn.Module, str, None], how: Optional[str]) -> Any:
    from .encoder import load_encoder

    if source.is_dir():
        from .export import export_run

        written = (export_run(source, workdir / "encoder.pt", model=model, how=how) if how else
                   export_run(source, workdir / "encoder.pt", model=model))
        return load_encoder(written, model=model, how=how)
    return load_encoder(source, model=model, how=how)


def _target(source: Path, out: Optional[PathLike], fmt: str, spec: Any) -> Path:
    if out is None:
        folder = source if source.is_dir() else source.parent
        return folder / default_name(fmt, spec)
    target = Path(out)
    return target / default_name(fmt, spec) if target.is_dir() else target


def export(source: PathLike, fmt: str = "pt", out: Optional[PathLike] = None, *, overwrite: bool = False,
           model: Union[nn.Module, str, None] = None, how: Optional[str] = None) -> Path:
    """Export the encoder of a run (``RUN_DIR``: its last checkpoint) or of an encoder file in format ``fmt``.

    Args:
        source: a RUN_DIR, or an ``encoder.pt`` / ``encoder.safetensors``.
        fmt: ``"pt"``, ``"safetensors"``, ``"timm"`` or ``"onnx"``.
        out: the file to write, or a folder for the default name (:func:`default_name`); default:
            RUN_DIR (or the encoder file's folder).
        overwrite: replace an existing file (otherwise a FileExistsError).
        model: for a network outside the built-in families: a new instance of it, or its spec (that code
            runs: you named it); see :func:`byol_wrap.job.encoder.load_encoder`.
        how: what to do instead, for the message when ``model`` is needed (the command line's ``--model``).

    Raises:
        ValueError: an unknown format, ``timm`` for a spec of neither timm nor torchvision.
        FileExistsError: the target exists and ``overwrite`` is false.
        RuntimeError: an ONNX model that onnxruntime does not reproduce within :data:`ONNX_RTOL`.

    Example:
        >>> export("runs/digits", "safetensors")                        # doctest: +SKIP
        PosixPath('runs/digits/encoder.safetensors')
    """
    from .encoder import export_encoder

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; give a RUN_DIR or an encoder file")
    if out is not None and Path(out).exists() and not Path(out).is_dir() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if out is not None and not Path(out).parent.is_dir() and not Path(out).is_dir():
        raise FileNotFoundError(f"cannot write {out}: the folder {Path(out).parent} does not exist")
    if fmt == "pt" and source.is_dir():  # encoder.pt straight from the checkpoint, export_run's own rules
        from .export import export_run

        if how:
            return export_run(source, out, model=model, overwrite=overwrite, how=how)
        return export_run(source, out, model=model, overwrite=overwrite)
    with tempfile.TemporaryDirectory() as workdir:
        encoder = _encoder_of(source, Path(workdir), model, how)
        meta = dict(encoder.meta)
        target = _target(source, out, fmt, meta.get("model_spec"))
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
        if fmt == "pt":
            core = {k: meta.pop(k) for k in ("model_spec", "hidden_layer", "image_size", "normalize",
                                             "representation_size", "steps", "token_pool") if k in meta}
            extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "model_class",
                                                                "byol_wrap_version")}
            return export_encoder(encoder.net, target, extra=extra or None, **core)
        if fmt == "safetensors":
            return save_safetensors(encoder.net.state_dict(), meta, target)
        if fmt == "timm":
            state, dropped = library_state_dict(encoder)
            from .io import atomic_save

            with tempfile.TemporaryDirectory(dir=target.parent) as check_dir:
                trial = Path(check_dir) / target.name
                torch.save(state, trial)
                _check_library_load(encoder, trial, dropped)
            return atomic_save(state, target)
        path, _ = export_onnx(encoder, target)
        return path
