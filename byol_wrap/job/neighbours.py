"""``neighbours.png``: what the encoder has learned, for a user without labels.

A grid of a few images chosen by the seed (one per row), each followed by its nearest neighbours
among the other images (cosine similarity of the representations), once with the trained encoder and
once with the same architecture untrained (:func:`byol_wrap.job.baseline.untrained_like`). When the
trained neighbours share what matters (the digit, the object) and the untrained ones only share
colour and brightness, pretraining learned something.

``pretrain`` draws ``RUN_DIR/plots/neighbours.png`` at the end of every run from up to
:data:`MAX_IMAGES` training images; ``byol-wrap neighbours ENCODER FOLDER --out neighbours.png``
draws it for any images. Images are decoded in the encoder's pixel format (its channels and sample
type, as ``embed`` decodes them) and shown as ``augmentations.png`` shows them
(:func:`byol_wrap.job.monitor.display_images`): 1 channel grey, 3 as colour, other counts as their
first three channels in false colour, each channel stretched to its 0.5-99.5 percentiles for data
other than 8-bit RGB, said in the figure's title.

Example:
    >>> draw_neighbours("runs/digits/encoder.pt", "digits", "neighbours.png")   # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.channels import PixelFormat

PathLike = Union[str, "os.PathLike[str]"]
MAX_IMAGES = 2000   # the pool searched for neighbours: a few seconds of embedding on a CPU
RUN_IMAGES = 1000   # at the end of a run (two nets over 1000 images: ~40 s for resnet18 at 224 px on a CPU)
QUERIES = 6
NEIGHBOURS = 6

__all__ = ["nearest_neighbours", "plot_neighbours", "display_neighbours", "draw_neighbours", "sample_images",
           "plot_run_neighbours", "neighbours_png", "MAX_IMAGES", "RUN_IMAGES"]


def nearest_neighbours(features: Tensor, queries: Tensor, k: int) -> Tensor:
    """``(len(queries), k)`` indices of each query's nearest other rows of ``features`` by cosine similarity
    (the query itself left out), most similar first.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 1.0]])
        >>> nearest_neighbours(f, torch.tensor([0, 2]), k=1).tolist()
        [[1], [3]]
    """
    if features.shape[0] < 2:
        raise ValueError("neighbours need at least 2 images")
    z = F.normalize(features.float(), dim=1)
    similarity = z[queries] @ z.T
    similarity[torch.arange(len(queries)), queries] = -float("inf")
    return similarity.topk(min(k, features.shape[0] - 1), dim=1).indices


def sample_images(data: Any, image_size: Any, *, count: int = MAX_IMAGES, seed: int = 0, workers: Optional[int] = None,
                  progress: bool = False, fmt: Optional[PixelFormat] = None) -> Tuple[Tensor, List[str]]:
    """Up to ``count`` images of ``data`` (a folder, ``.npz``, ``"digits"`` or a Dataset of
    ``open_images``), chosen by ``seed``, at ``image_size`` (embed's centre view), and their names.

    ``fmt``: the encoder's pixel format, which files are decoded to (``None``: uint8 RGB); in-memory
    data (``.npz``, digits) is 8-bit RGB and refused for another format."""
    from .data import default_load_size, default_workers, eval_images, make_loader, open_images

    size = image_size if isinstance(image_size, int) else tuple(image_size)
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "load_size"):
        dataset = data  # a run's own training set: used as it is
    else:
        dataset = open_images(data, default_load_size(size), fmt=fmt)
        if fmt is not None and not fmt.is_photo and not hasattr(dataset, "paths"):
            raise ValueError(f"{data} holds 8-bit RGB images but the encoder takes {fmt.channels} channel(s) of "
                             f"{fmt.dtype}; give a folder of such images")
    total = len(dataset)  # type: ignore[arg-type]
    if total < 2:
        raise ValueError(f"{data} holds {total} image(s); neighbours need at least 2")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(total, generator=generator)[:count].sort().values.tolist()
    describe = getattr(dataset, "describe", lambda i: f"dataset[{i}]")
    in_memory = getattr(dataset, "images", None)
    if isinstance(in_memory, Tensor):  # arrays and digits: no decoding
        return eval_images(in_memory[chosen], size), [describe(i) for i in chosen]
    from .evaluate import _bar

    subset = torch.utils.data.Subset(dataset, chosen)  # items keep the dataset's own index
    subset.load_size = getattr(dataset, "load_size", None)  # type: ignore[attr-defined]
    subset.describe = describe  # type: ignore[attr-defined]
    loader = make_loader(subset, min(64, len(chosen)), workers=default_workers() if workers is None else workers,
                         drop_last=False, shuffle=False, continuous=False)
    images, names = [], []
    bar = _bar(len(chosen), progress, "decode")
    try:
        for batch in loader:
            if len(batch.images):
                images.append(eval_images(batch.images, size))
                names += [describe(i) for i in batch.indices.tolist()]
            bar.update(len(batch.images) + len(batch.skipped))
    finally:
        bar.close()
        loader.close()
    if len(names) < 2:
        raise ValueError(f"{data}: fewer than 2 readable images")
    return torch.cat(images), names


def display_neighbours(images: Tensor, fmt: Optional[PixelFormat] = None) -> Tuple[Tensor, Optional[str]]:
    """``images`` in the encoder's pixel format as displayable ``(N, H, W, 3)`` floats in [0, 1], and a
    caption (``None`` for 8-bit RGB, shown as it is): the rule of ``augmentations.png``
    (:func:`byol_wrap.job.monitor.display_images`), on ``x / fmt.scale``, stretched per channel.

    Example:
        >>> shown, caption = display_neighbours(torch.zeros(2, 1, 4, 4, dtype=torch.uint16),
        ...                                     PixelFormat(1, "uint16", 65535.0))
        >>> tuple(shown.shape), caption.split(";")[0]
        ((2, 4, 4, 3), '1 channel, shown grey')
    """
    from .data.channels import to_device_float
    from .monitor import display_images

    if images.dtype == torch.uint8 and images.shape[1] == 3 and (fmt is None or fmt.is_photo):
        return images.permute(0, 2, 3, 1).float().div(255), None
    x = to_device_float(images, fmt) if fmt is not None else images
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    shown, caption = display_images([x], stretch=fmt is not None and not fmt.is_photo)
    return shown[0], caption


def plot_neighbours(images: Tensor, panels: Sequence[Tuple[str, Tensor]], queries: Tensor, path: PathLike,
                    k: int = NEIGHBOURS, fmt: Optional[PixelFormat] = None) -> Path:
    """Draw the grid: per query a row of [query | its ``k`` neighbours] for each ``(title, features)`` panel.

    ``images`` are in the encoder's pixel format ``fmt`` (``None``: uint8 RGB), shown by :func:`display_neighbours`.
    """
    from .monitor import _figure, _save_figure

    found = [(title, nearest_neighbours(feats, queries, k)) for title, feats in panels]
    k = found[0][1].shape[1]
    columns = len(found) * (k + 1)
    rows = len(queries)
    used = sorted(set(queries.tolist()) | {i for _, index in found for i in index.flatten().tolist()})
    row_of = {image: row for row, image in enumerate(used)}
    shown, caption = display_neighbours(images[used], fmt)  # stretched over the images in the picture
    head = 0.4 + (0.3 if caption else 0.0)
    figure = _figure(0.9 * columns + 0.4 * (len(found) - 1), 0.9 * rows + 0.1 + head)
    axes = figure.subplots(rows, columns, squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - head / (0.9 * rows + 0.1 + head),
                           wspace=0.06, hspace=0.06)
    if caption:
        figure.suptitle(caption, fontsize=8)

    def show(axis: Any, image: Tensor, edge: Optional[str] = None) -> None:
        axis.imshow(image.cpu().numpy())
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(edge is not None)
            if edge is not None:
                spine.set_edgecolor(edge)
                spine.set_linewidth(2.5)

    for p, (title, index) in enumerate(found):
        left = p * (k + 1)
        axes[0][left].set_title("query", fontsize=8)
        axes[0][left + 1 + (k - 1) // 2].set_title(f"{title}: nearest {k}", fontsize=9)
        for r, query in enumerate(queries.tolist()):
            show(axes[r][left], shown[row_of[query]], edge="black")
            for c, neighbour in enumerate(index[r].tolist()):
                show(axes[r][left + 1 + c], shown[row_of[neighbour]])
    _save_figure(figure, Path(path))
    return Path(path)


def draw_neighbours(encoder: Any, data: Any, out: PathLike, *, seed: int = 0, queries: int = QUERIES,
                    k: int = NEIGHBOURS, max_images: int = MAX_IMAGES, baseline: bool = True,
                    model: Union[nn.Module, str, None] = None, device: Union[str, torch.device] = "cpu",
                    workers: Optional[int] = None, batch_size: int = 256, progress: bool = False,
                    how: Optional[str] = None) -> Path:
    """Write ``neighbours.png`` for ``encoder`` (a path or an Encoder) on ``data`` (any unlabelled images).

    Args:
        encoder: ``encoder.pt`` / ``.safetensors`` or an :class:`~byol_wrap.job.encoder.Encoder`.
        data: a folder (searched recursively), a ``.npz``, ``"digits"`` or a Dataset.
        out: the PNG to write (atomically; its folder is created).
        seed: chooses the ``max_images`` pool and the ``queries`` shown, and seeds the baseline.
        k: neighbours per query; ``baseline``: add the untrained architecture's panel.
        model: for a network outside the built-in families: a new instance of it, or its spec (that code
            runs: you named it); ``how``: what to do instead, for the message when it is needed.

    Example:
        >>> draw_neighbours("runs/photos/encoder.pt", "photos/", "neighbours.png")  # doctest: +SKIP
    """
    from .baseline import untrained_like
    from .data.channels import meta_pixel_format
    from .evaluate import _load, features

    trained, fresh, _ = _load(encoder, model, torch.device(device), how)
    fmt = meta_pixel_format(trained.meta)
    images, _names = sample_images(data, trained.meta["image_size"], count=max_images, seed=seed, workers=workers,
                                   progress=progress, fmt=fmt)
    generator = torch.Generator().manual_seed(seed + 1)
    chosen = torch.randperm(images.shape[0], generator=generator)[:queries]
    panels = [("BYOL encoder", features(trained, images, batch_size, device))]
    if baseline:
        panels.append(("untrained", features(untrained_like(trained, seed=seed, model=fresh), images, batch_size,
                                             device)))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return plot_neighbours(images, panels, chosen, out, k=k, fmt=fmt)


def plot_run_neighbours(encoder_path: PathLike, dataset: Any, out: PathLike, *, net: nn.Module, seed: int = 0,
                        device: Union[str, torch.device] = "cpu", workers: Optional[int] = None) -> Optional[Path]:
    """``RUN_DIR/plots/neighbours.png`` at the end of ``pretrain``: :func:`draw_neighbours` on up to
    :data:`RUN_IMAGES` training images. ``net`` is the trained backbone (it rebuilds the encoder of a
    network given in Python). A failure warns and returns ``None``: the run's results are already saved.
    """
    import copy
    import warnings

    from .encoder import load_encoder

    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a Python-given net's baseline is reset_parameters()
            encoder = load_encoder(Path(encoder_path), device, model=copy.deepcopy(net))
            return draw_neighbours(encoder, dataset, out, seed=seed, max_images=RUN_IMAGES, device=device,
                                   workers=workers)
    except Exception as error:  # noqa: BLE001 - a picture must not fail a finished run
        warnings.warn(f"could not draw {out}: {type(error).__name__}: {error}", stacklevel=2)
        return None


def neighbours_png(run: Any, encoder_path: Path) -> None:
    """The end of a ``pretrain`` run (:class:`byol_wrap.job.run.Run`): ``RUN_DIR/plots/neighbours.png``, on rank 0."""
    if run.world.main:
        plot_run_neighbours(encoder_path, run.dataset, run.out / "plots" / "neighbours.png", net=run.net,
                            seed=run.options["seed"], device=run.device, workers=run.options["workers"])
