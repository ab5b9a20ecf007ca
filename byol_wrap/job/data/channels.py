"""The run's pixel format: how many channels, which sample type, and what every file becomes in it.

``--channels auto`` reads the headers of up to :data:`HEADER_SAMPLE` files (spread evenly over the
sorted list) and takes the channel count of the data: when one count holds at least
:data:`MAJORITY` of the files it is the run's (files with another count are converted where that
loses nothing, else skipped with the reason); a mix of grey and colour files without such a
majority is a colour run (grey replicated into RGB loses nothing); any other mix is an error that
says what to pass. Alpha bands are not counted (the photo rule: composited onto white).

The sample type is the narrowest that holds every sampled file without loss: 8-bit files stay
uint8, 16-bit files uint16 (8-bit ones among them scaled by 257), float or mixed declared bit depths
float32 with every file divided by its own full intensity. Conversion to float (``x / scale``)
happens on the device (:func:`to_device_float`).

Example:
    >>> from byol_wrap.job.data.formats import ImageInfo
    >>> grey16 = ImageInfo(1, False, "uint16", 65535.0, "PNG I;16")
    >>> fmt, message = choose_format([("a.png", grey16)] * 5)
    >>> fmt
    PixelFormat(channels=1, dtype='uint16', scale=65535.0)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
from torch import Tensor

from .formats import DecodedImage, ImageFormatError, ImageInfo, inspect_image

MAJORITY = 0.9          # share of the sampled files one channel count needs to be the run's
HEADER_SAMPLE = 2000    # headers read to choose the format (evenly spread over the files)
STATS_SAMPLE = 2000     # images decoded for the per-channel statistics
ChannelsArg = Union[str, int, None]

__all__ = [
    "PixelFormat", "RGB8", "MAJORITY", "HEADER_SAMPLE", "STATS_SAMPLE", "parse_channels", "spread", "choose_format",
    "detect_format", "conform", "to_device_float", "meta_pixel_format", "ChannelStatistics", "dataset_format",
    "dataset_statistics", "uses_data_statistics",
]


@dataclass(frozen=True)
class PixelFormat:
    """What a run's images are: ``channels``, sample ``dtype`` (``uint8``/``uint16``/``float32``)
    and ``scale``, the sample value of full intensity (``x / scale`` is the float image)."""

    channels: int
    dtype: str
    scale: float

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"uint8": torch.uint8, "uint16": torch.uint16, "float32": torch.float32}[self.dtype]

    @property
    def is_photo(self) -> bool:
        """8-bit RGB: the paper's pipeline and ImageNet's statistics, as before channels were detected."""
        return self.channels == 3 and self.dtype == "uint8"

    def as_dict(self) -> Dict[str, Any]:
        return {"channels": self.channels, "dtype": self.dtype, "scale": self.scale}

    @classmethod
    def from_dict(cls, value: Dict[str, Any]) -> PixelFormat:
        return cls(int(value["channels"]), str(value["dtype"]), float(value["scale"]))


RGB8 = PixelFormat(3, "uint8", 255.0)


def parse_channels(value: ChannelsArg) -> Optional[int]:
    """``"auto"``/None -> None; a positive int (or its string) -> that int; else a ValueError.

    Example:
        >>> parse_channels("auto"), parse_channels("4"), parse_channels(1)
        (None, 4, 1)
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        channels = int(value) if not isinstance(value, bool) else -1
    except (TypeError, ValueError):
        channels = -1
    if channels < 1:
        raise ValueError(f"--channels must be auto or a positive integer, got {value!r}")
    return channels


def spread(items: Sequence[Any], count: int) -> List[Any]:
    """At most ``count`` items evenly spread over ``items`` (all of them when fewer), in order.

    Example:
        >>> spread(list(range(10)), 3)
        [0, 3, 6]
    """
    n = len(items)
    if n <= count:
        return list(items)
    return [items[(i * n) // count] for i in range(count)]


def _fits(channels: int, run: int) -> bool:
    return channels == run or (channels == 1 and run == 3)


def _counts_text(counts: Counter, examples: Dict[int, str]) -> str:
    return ", ".join(f"{n} with {c} channel{'s' * (c != 1)} (e.g. {examples[c]})" for c, n in counts.most_common())


def choose_format(infos: Sequence[Tuple[str, ImageInfo]], channels: ChannelsArg = "auto") -> Tuple[PixelFormat, str]:
    """The run's :class:`PixelFormat` from sampled file headers, and one log line saying why.

    Raises:
        ValueError: no headers, or mixed channel counts without a clear majority (the message
            lists the counts and says to pass ``--channels N``).

    Example:
        >>> from byol_wrap.job.data.formats import ImageInfo
        >>> rgb, grey = ImageInfo(3, False, "uint8", 255.0, "JPEG"), ImageInfo(1, False, "uint8", 255.0, "JPEG")
        >>> choose_format([("a.jpg", rgb)] * 9 + [("b.jpg", grey)])[0]
        PixelFormat(channels=3, dtype='uint8', scale=255.0)
    """
    if not infos:
        raise ValueError("no readable image headers to choose the channel count from")
    requested = parse_channels(channels)
    counts: Counter = Counter(info.channels for _, info in infos)
    examples: Dict[int, str] = {}
    for path, info in infos:
        examples.setdefault(info.channels, path)
    total = len(infos)
    if requested is not None:
        run, why = requested, f"--channels {requested}"
    else:
        top, top_count = counts.most_common(1)[0]
        if top_count >= MAJORITY * total:
            run = top
        elif set(counts) == {1, 3}:
            run = 3  # grey into RGB loses nothing
        else:
            raise ValueError(
                f"the images have mixed channel counts: {_counts_text(counts, examples)} among {total} sampled "
                f"files, and no count holds {MAJORITY:.0%}; pass --channels N (files with another count are "
                f"skipped, grey files are replicated into --channels 3)")
        why = f"auto: {sum(n for c, n in counts.items() if _fits(c, run))} of {total} sampled files fit"
    fitting = [info for _, info in infos if _fits(info.channels, run)]
    dtype, scale = _sample_type(fitting)
    others = total - len(fitting)
    skipped = f"; {others} sampled files with other channel counts will be skipped" if others else ""
    message = f"channels: {run} ({why}{skipped}); samples {dtype}, full intensity {scale:g}"
    return PixelFormat(run, dtype, scale), message


def detect_format(paths: Sequence[str], channels: ChannelsArg = "auto",
                  sample: int = HEADER_SAMPLE) -> Tuple[PixelFormat, str]:
    """:func:`choose_format` from the headers of up to ``sample`` of ``paths`` (evenly spread);
    files whose header cannot be read are left out of the choice (the loader skips them later).

    Raises:
        ValueError: as :func:`choose_format`, or when no sampled header is readable (with examples).

    Example:
        >>> import tempfile, numpy as np
        >>> p = tempfile.mkdtemp() + "/a.npy"
        >>> np.save(p, np.zeros((13, 32, 32), np.float32))
        >>> detect_format([p])[0]
        PixelFormat(channels=13, dtype='float32', scale=1.0)
    """
    chosen = spread(list(paths), sample)
    infos: List[Tuple[str, ImageInfo]] = []
    failures: List[Tuple[str, str]] = []
    for path in chosen:
        try:
            infos.append((path, inspect_image(path)))
        except ImageFormatError as error:
            failures.append((path, str(error)))
    if not infos:
        example = f", e.g. {failures[0][0]}: {failures[0][1]}" if failures else ""
        raise ValueError(f"none of the {len(chosen)} sampled image headers could be read{example}")
    fmt, message = choose_format(infos, channels)
    sampled = f"{len(chosen)} of {len(paths)} files' headers read" if len(chosen) < len(paths) else \
        f"{len(chosen)} headers read"
    bad = f", {len(failures)} unreadable" if failures else ""
    return fmt, f"{message} ({sampled}{bad})"


def _sample_type(infos: Iterable[ImageInfo]) -> Tuple[str, float]:
    kinds = {(info.dtype, info.scale) for info in infos}
    if not kinds:
        return "uint8", 255.0
    if len(kinds) == 1:
        return next(iter(kinds))
    if kinds <= {("uint8", 255.0), ("uint16", 65535.0)}:
        return "uint16", 65535.0
    return "float32", 1.0


def conform(image: DecodedImage, fmt: PixelFormat) -> np.ndarray:
    """``image``'s pixels in the run's format ``(fmt.channels, H, W)`` of ``fmt.dtype``, converted
    only where nothing is lost: grey replicated into RGB, RGB with three equal channels taken as grey,
    8-bit into 16-bit (x 257), any into float32 (divided by the file's full intensity).

    Raises:
        ImageFormatError: the reason a file does not fit the run (goes to ``skipped.txt``).

    Example:
        >>> from byol_wrap.job.data.formats import DecodedImage
        >>> grey = DecodedImage(np.full((1, 2, 2), 7, np.uint8), 255.0, "PNG L")
        >>> conform(grey, RGB8).shape
        (3, 2, 2)
    """
    pixels = image.pixels
    have, want = int(pixels.shape[0]), fmt.channels
    if have != want:
        if have == 1 and want == 3:
            pixels = np.repeat(pixels, 3, axis=0)
        elif have == 3 and want == 1 and np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2]):
            pixels = pixels[:1]
        else:
            hint = f"pass --channels {have} for a run of such files" if have != 3 or want != 1 else \
                "colour channels differ; pass --channels 3 to keep colour"
            raise ImageFormatError(f"{have} channel{'s' * (have != 1)} ({image.kind}) in a {want}-channel run "
                                   f"({hint})")
    return _convert_samples(pixels, image.scale, image.kind, fmt)


def _convert_samples(pixels: np.ndarray, scale: float, kind: str, fmt: PixelFormat) -> np.ndarray:
    source = str(pixels.dtype)
    if source == fmt.dtype and scale == fmt.scale:
        return pixels
    if fmt.dtype == "float32":
        return (pixels.astype(np.float32) / np.float32(scale)) if scale != 1.0 else pixels.astype(np.float32)
    if fmt.dtype == "uint16" and source in ("uint8", "uint16") and scale <= fmt.scale:
        if scale == 255.0 and fmt.scale == 65535.0:
            return pixels.astype(np.uint16) * np.uint16(257)
        return np.rint(pixels.astype(np.float64) * (fmt.scale / scale)).astype(np.uint16)
    raise ImageFormatError(f"{source} samples of full intensity {scale:g} ({kind}) in a run of {fmt.dtype} samples "
                           f"(full intensity {fmt.scale:g}) would lose bits; the run's sample type comes from the "
                           f"sampled files' headers")


def to_device_float(images: Tensor, fmt: PixelFormat) -> Tensor:
    """A batch in the run's format as float images (``x / scale``), on the batch's device.

    uint8 photos pass unchanged (the learner divides them by 255 itself).

    Example:
        >>> to_device_float(torch.full((1, 1, 1, 1), 65535, dtype=torch.uint16), PixelFormat(1, "uint16", 65535.0))
        tensor([[[[1.]]]])
    """
    if images.dtype == torch.uint8 and fmt.scale == 255.0:
        return images
    x = images.to(torch.float32)
    return x.div_(fmt.scale) if fmt.scale != 1.0 else x


def meta_pixel_format(meta: Dict[str, Any]) -> Optional[PixelFormat]:
    """The pixel format an ``encoder.pt``'s metadata records (None for encoders of 0.2, which read uint8 RGB).

    Example:
        >>> meta_pixel_format({"pixel_format": {"channels": 1, "dtype": "uint16", "scale": 4095}})
        PixelFormat(channels=1, dtype='uint16', scale=4095.0)
    """
    value = meta.get("pixel_format")
    return PixelFormat.from_dict(value) if isinstance(value, dict) else None


def uses_data_statistics(fmt: PixelFormat) -> bool:
    """Whether the run normalises with statistics of its own images (every format but 8-bit RGB,
    which keeps ImageNet's, the paper's and the pretrained networks')."""
    return not fmt.is_photo


class ChannelStatistics:
    """Per-channel mean and standard deviation, accumulated over float image batches (float64 sums).

    Example:
        >>> stats = ChannelStatistics(2)
        >>> stats.add(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)], dim=1))
        >>> stats.mean(), stats.std()
        ([0.0, 1.0], [0.0, 0.0])
    """

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.squares = torch.zeros(channels, dtype=torch.float64)
        self.pixels = 0
        self.images = 0

    def add(self, x: Tensor) -> None:
        """Add a float batch ``(N, C, H, W)``."""
        x = x.detach().to(torch.float64)
        self.total += x.sum(dim=(0, 2, 3))
        self.squares += (x * x).sum(dim=(0, 2, 3))
        self.pixels += int(x.shape[0] * x.shape[2] * x.shape[3])
        self.images += int(x.shape[0])

    def mean(self) -> List[float]:
        return cast(List[float], (self.total / max(self.pixels, 1)).tolist())

    def std(self) -> List[float]:
        mean = self.total / max(self.pixels, 1)
        variance = (self.squares / max(self.pixels, 1) - mean * mean).clamp_min(0)
        return cast(List[float], variance.sqrt().tolist())

    def normalization(self, floor: float = 1e-6) -> Tuple[List[float], List[float]]:
        """``(mean, std)`` for ``BYOL(normalize=...)``; a constant channel gets std 1 (not a division by 0)."""
        return self.mean(), [s if s > floor else 1.0 for s in self.std()]


def dataset_format(dataset: Any, channels: ChannelsArg = "auto") -> Tuple[PixelFormat, str]:
    """The pixel format of a training dataset, set on it, and the log line: image files get theirs
    from their headers (:func:`detect_format`); in-memory arrays, digits and a user's Dataset are 8-bit RGB.

    Raises:
        ValueError: mixed channel counts (see :func:`choose_format`), or ``--channels`` other than
            3 or auto for data that is not image files.

    Example:
        >>> from byol_wrap.job.data import open_images
        >>> dataset_format(open_images("digits", 16))[0]
        PixelFormat(channels=3, dtype='uint8', scale=255.0)
    """
    paths = getattr(dataset, "paths", None)
    if paths is None or not hasattr(dataset, "pixel_format"):
        requested = parse_channels(channels)
        if requested not in (None, 3):
            raise ValueError(f"--channels {requested} applies to folders of image files; this data is 8-bit RGB "
                             f"in memory (digits, .npz, a Dataset): leave --channels at auto")
        return RGB8, "channels: 3 (8-bit RGB images in memory)"
    fmt, message = detect_format(paths, channels)
    dataset.pixel_format = fmt
    return fmt, message


def dataset_statistics(dataset: Any, fmt: PixelFormat, workers: Optional[int] = None,
                       sample: int = STATS_SAMPLE) -> Tuple[Tuple[List[float], List[float]], str]:
    """Per-channel ``(mean, std)`` of up to ``sample`` images of ``dataset`` (evenly spread, decoded
    at its load size, as floats ``x / fmt.scale``), and the log line saying what was measured.

    Raises:
        ValueError: no image of the sample could be decoded.

    Example:
        >>> from byol_wrap.job.data import open_images
        >>> (mean, std), line = dataset_statistics(open_images("digits", 8), RGB8, workers=0, sample=64)
        >>> len(mean), line.split(" from ")[1]
        (3, '64 images (0 unreadable)')
    """
    from torch.utils.data import Dataset

    from .loader import make_loader

    indices = spread(list(range(len(dataset))), sample)

    class _Sample(Dataset):
        def __init__(self) -> None:
            self.load_size = getattr(dataset, "load_size", (1, 1))
            self.pixel_format = fmt
            self.strict = False

        def __len__(self) -> int:
            return len(indices)

        def __getitem__(self, i: int) -> Any:
            image, _, reason = dataset[indices[i]]
            return image, i, reason

        def describe(self, i: int) -> str:
            describe = getattr(dataset, "describe", None)
            return str(describe(indices[i])) if describe else f"dataset[{indices[i]}]"

    stats = ChannelStatistics(fmt.channels)
    skipped, example = 0, ""
    loader = make_loader(_Sample(), min(64, len(indices)), workers=workers, drop_last=False, shuffle=False,
                         continuous=False, strict=False)
    try:
        for batch in loader:
            skipped += len(batch.skipped)
            example = example or "".join(f", e.g. {path}: {why}" for path, why in batch.skipped[:1])
            if len(batch.images):
                # x / scale for every sample type: the learner divides uint8 by 255 before it normalises
                stats.add(batch.images.to(torch.float32).div_(fmt.scale))
    finally:
        loader.close()
    if stats.images == 0:
        raise ValueError(f"none of the {len(indices)} images sampled for the per-channel statistics could be "
                         f"decoded{example}")
    mean, std = stats.normalization()
    shown = ", ".join(f"{m:.4g}" for m in mean[:8]) + (", ..." if len(mean) > 8 else "")
    shown_std = ", ".join(f"{s:.4g}" for s in std[:8]) + (", ..." if len(std) > 8 else "")
    return (mean, std), (f"normalisation: per-channel mean [{shown}], std [{shown_std}] of x / {fmt.scale:g}, "
                         f"from {stats.images} images ({skipped} unreadable)")
