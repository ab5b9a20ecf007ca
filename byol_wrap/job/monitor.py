"""Watching a run: the collapse metric, ``metrics.jsonl`` (+ TensorBoard), the plots and the progress bar.

The collapse metric is the standard deviation over the batch of the l2-normalised online
projections, averaged over the dimensions and multiplied by ``sqrt(dimension)``. Projections spread
over the sphere give about 1 (each coordinate of a random unit vector in ``d`` dimensions has
standard deviation ``1/sqrt(d)``); when every image maps to the same vector it is 0 (Chen & He 2021,
SimSiam, section 4.1 and figure 2, use the same quantity). A run warns when it falls below
:data:`COLLAPSE_THRESHOLD`.

Example:
    >>> import torch
    >>> round(collapse_metric(torch.ones(8, 256)), 3)
    0.0
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# 0.1: a tenth of the healthy value. Healthy BYOL runs stay between about 0.5 and 1 (the measured
# digits and CIFAR runs: BENCHMARKS.md); a batch at 0.1 keeps 1 % of the spread (variance) of a healthy
# one, far below anything a learning run passes through, and a fully collapsed run reaches ~0 within
# a few hundred steps, so the warning fires before much time is lost.
COLLAPSE_THRESHOLD = 0.1


@torch.no_grad()
def collapse_metric(projections: Tensor) -> float:
    """``std`` over the batch of the l2-normalised ``projections`` ``(N, D)``, mean over ``D``, times ``sqrt(D)``.

    About 1 for projections spread over the sphere, 0 for a collapsed batch.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> 0.9 < collapse_metric(torch.randn(4096, 64)) < 1.1
        True
    """
    z = F.normalize(projections.detach().float().flatten(1), dim=1)
    if z.shape[0] < 2:
        return float("nan")
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


class ProjectionRecorder:
    """Keeps the first output of a module per forward (a forward hook), for :func:`collapse_metric`.

    Example:
        >>> layer = torch.nn.Linear(4, 3); recorder = ProjectionRecorder(layer)
        >>> _ = layer(torch.ones(2, 4)); recorder.take().shape
        torch.Size([2, 3])
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.output: Optional[Tensor] = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if self.output is None and isinstance(output, Tensor):
            self.output = output.detach()

    def take(self) -> Optional[Tensor]:
        """The recorded output (then forgotten, so the next forward records again)."""
        output, self.output = self.output, None
        return output

    def remove(self) -> None:
        self.handle.remove()


# ----------------------------------------------------------------------------- metrics.jsonl
class MetricsLog:
    """``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events when tensorboard exists.

    The rows live in memory and the file is rewritten atomically by :meth:`flush` (at every
    checkpoint, at the end, and at most every ``flush_seconds``), so a kill never leaves a torn
    line. On resume the rows after the checkpoint's step are dropped (:meth:`resume`).

    Example:
        >>> import tempfile
        >>> log = MetricsLog(tempfile.mkdtemp(), tensorboard=False)
        >>> log.append({"step": 1, "loss": 0.5}); log.flush()
        >>> open(log.path).read()
        '{"step": 1, "loss": 0.5}\\n'
    """

    def __init__(self, run_dir: os.PathLike, tensorboard: bool = True, flush_seconds: float = 30.0,
                 warn: Optional[Callable[[str], None]] = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._warn = warn or (lambda message: warnings.warn(message, RuntimeWarning, stacklevel=3))
        self.rows: List[Dict[str, Any]] = []
        self.flush_seconds = flush_seconds
        self._last_flush = 0.0
        self._tensorboard_dir = Path(run_dir) / "tensorboard"
        self._want_tensorboard = tensorboard
        self._writer: Any = None

    def resume(self, step: int) -> None:
        """Load the rows up to ``step`` (a killed run may have logged beyond its last checkpoint)."""
        self.rows = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and row.get("step", step + 1) <= step:
                    self.rows.append(row)
        self._open_tensorboard(purge_step=step + 1)

    def start(self) -> None:
        """A fresh run: no rows (events of a run killed before its first checkpoint are hidden)."""
        self.rows = []
        self._open_tensorboard(purge_step=0)

    def _open_tensorboard(self, purge_step: Optional[int]) -> None:
        if not self._want_tensorboard or self._writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (it comes with the [train] extra)
            return
        self._tensorboard("open", lambda: SummaryWriter(str(self._tensorboard_dir), purge_step=purge_step))

    def _tensorboard(self, what: str, call: Callable[[], Any]) -> None:
        """Run one TensorBoard call; a failure (its writer thread's full disk, say) ends the events, not the run.

        ``metrics.jsonl`` holds every row, and the run's own writes report a full disk by name.
        """
        try:
            result = call()
        except Exception as error:  # noqa: BLE001 - tensorboard's writer thread re-raises whatever it met
            writer, self._writer, self._want_tensorboard = self._writer, None, False
            self._warn(f"WARNING: TensorBoard events stopped ({what} failed: {type(error).__name__}: "
                       f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no message'}); "
                       f"metrics.jsonl keeps every row")
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # noqa: BLE001, S110 - already reported once above
                    pass
            return
        if what == "open":
            self._writer = result

    def append(self, row: Dict[str, Any]) -> None:
        """Add one logged step (numbers; ``None`` values are left out)."""
        row = {key: value for key, value in row.items() if value is not None}
        self.rows.append(row)
        if self._writer is not None:
            scalars = [(key, value) for key, value in row.items()
                       if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)]
            self._tensorboard("add_scalar", lambda: [self._writer.add_scalar(k, v, row["step"]) for k, v in scalars])

    def flush(self, force: bool = True) -> None:
        """Rewrite ``metrics.jsonl`` atomically (unless ``force=False`` and the last flush is recent)."""
        import time

        from .io import atomic_write_text

        now = time.monotonic()
        if not force and now - self._last_flush < self.flush_seconds:
            return
        self._last_flush = now
        text = "".join(json.dumps(row) + "\n" for row in self.rows)
        atomic_write_text(self.path, text)
        if self._writer is not None:
            self._tensorboard("flush", self._writer.flush)

    def close(self) -> None:
        if self._writer is not None:
            self._tensorboard("close", self._writer.close)
            self._writer = None

    def series(self, key: str) -> List[Sequence[float]]:
        """``[(step, value), ...]`` of the rows that have ``key``."""
        return [(row["step"], row[key]) for row in self.rows if key in row]


# ----------------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure: Any, path: Path) -> None:
    import io

    from .io import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def plot_training(log: MetricsLog, path: os.PathLike, threshold: float = COLLAPSE_THRESHOLD) -> Path:
    """``plots/training.png``: loss, tau, learning rate, collapse metric and kNN accuracy over steps."""
    panels = [("loss", "loss"), ("tau", "tau (target EMA decay)"), ("lr", "learning rate"),
              ("collapse", "collapse metric (1 healthy, 0 collapsed)"), ("knn", "kNN top-1 accuracy")]
    figure = _figure(4 * len(panels), 3.2)
    axes = figure.subplots(1, len(panels))
    figure.subplots_adjust(left=0.04, right=0.99, bottom=0.16, top=0.9, wspace=0.3)
    for axis, (key, title) in zip(axes, panels):
        points = log.series(key)
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if key == "knn" or len(points) < 3 else None, markersize=4)
        else:
            axis.text(0.5, 0.5, "not measured" if key == "knn" else "no data yet", ha="center", va="center",
                      transform=axis.transAxes, color="grey")
        if key == "collapse":
            axis.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"warning ({threshold})")
            axis.legend(loc="lower left", fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    _save_figure(figure, Path(path))
    return Path(path)


def display_images(rows: Sequence[Tensor], stretch: bool) -> Tuple[List[Tensor], str]:
    """Float ``(N, C, H, W)`` rows as displayable ``(N, H, W, 3)`` in [0, 1], and a caption.

    C = 1 is shown grey, C = 3 as colour, any other count as its first three channels (two for C = 2,
    blue left black) in false colour, said in the caption. With ``stretch`` each channel is mapped
    from its 0.5 and 99.5 percentiles over the first row (the images) to [0, 1], the same for every
    row, so 12-bit data in 16-bit files or float bands show their contrast; otherwise values in
    [0, 1] are shown as they are.

    Example:
        >>> shown, caption = display_images([torch.rand(2, 4, 8, 8)], stretch=True)
        >>> tuple(shown[0].shape), caption.split(";")[0]
        ((2, 8, 8, 3), 'channels 1-3 of 4 as red, green, blue (false colour)')
    """
    channels = int(rows[0].shape[1])
    if channels == 1:
        caption = "1 channel, shown grey"
    elif channels == 3:
        caption = "3 channels, shown as colour (R, G, B)"
    elif channels == 2:
        caption = "channels 1-2 of 2 as red, green (false colour)"
    else:
        caption = f"channels 1-3 of {channels} as red, green, blue (false colour)"
    shown_channels = 1 if channels == 1 else min(3, channels)
    lo = torch.zeros(1, shown_channels, 1, 1)
    hi = torch.ones(1, shown_channels, 1, 1)
    if stretch:
        first = rows[0][:, :shown_channels].detach().float().cpu().transpose(0, 1).reshape(shown_channels, -1)
        lo = torch.quantile(first, 0.005, dim=1).view(1, -1, 1, 1)
        hi = torch.quantile(first, 0.995, dim=1).view(1, -1, 1, 1)
        hi = torch.where(hi > lo, hi, lo + 1)
        caption += "; each channel stretched from its 0.5 to 99.5 percentile of the images shown"
    shown = []
    for row in rows:
        x = ((row[:, :shown_channels].detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
        if shown_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        elif shown_channels == 2:
            x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        shown.append(x.permute(0, 2, 3, 1))
    return shown, caption


def plot_augmentations(images: Tensor, view1: Tensor, view2: Tensor, path: os.PathLike,
                       normalize: Optional[Sequence[Sequence[float]]] = None, stretch: bool = False) -> Path:
    """``plots/augmentations.png``: a row each of the images, their T views and their T' views.

    ``images`` may be uint8 or float in [0, 1]; ``normalize=(mean, std)`` undoes a
    normalisation that ended the views, so they show as images. Images of 1 channel are shown
    grey, of 3 in colour, of other counts as their first three channels in false colour, said in
    the figure (:func:`display_images`); ``stretch`` maps each channel's range in the images
    shown to the display's (for 16-bit, float and multi-band data).
    """
    def as_float(x: Tensor) -> Tensor:
        x = x.detach().float().cpu()
        if images.dtype == torch.uint8 or (not stretch and x.numel() and x.max() > 1.5):
            x = x / 255
        return x

    rows = [as_float(images), view1.detach().float().cpu(), view2.detach().float().cpu()]
    if normalize is not None:
        mean = torch.tensor(normalize[0]).view(1, -1, 1, 1)
        std = torch.tensor(normalize[1]).view(1, -1, 1, 1)
        rows[1:] = [row * std + mean for row in rows[1:]]
    shown, caption = display_images(rows, stretch)
    count = images.shape[0]
    multi = images.shape[1] != 3 or stretch
    figure = _figure(1.6 * count, 5.4 if multi else 5.0)
    axes = figure.subplots(3, count, squeeze=False)
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=0.93 if multi else 0.99, wspace=0.05, hspace=0.05)
    if multi:
        figure.suptitle(caption, fontsize=9)
    for r, (row, label) in enumerate(zip(shown, ("image", "view T", "view T'"))):
        for c in range(count):
            axis = axes[r][c]
            axis.imshow(row[c].numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(label)
    _save_figure(figure, Path(path))
    return Path(path)


# ----------------------------------------------------------------------------- progress bar
def progress_bar(total: int, initial: int, enabled: bool = True) -> Any:
    """A tqdm bar over the run's steps (``initial`` when resuming)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                smoothing=0.1)


def bar_postfix(row: Dict[str, Any]) -> Dict[str, str]:
    """The bar's fields: loss, tau, learning rate, images/s, data-wait share, skipped files.

    Example:
        >>> bar_postfix({"loss": 0.5, "tau": 0.996, "lr": 3e-4, "images_per_s": 120.0, "data_wait": 0.1,
        ...              "skipped": 2})
        {'loss': '0.5000', 'tau': '0.99600', 'lr': '3.0e-04', 'img/s': '120', 'data wait': '10%', 'skipped': '2'}
    """
    return {
        "loss": f"{row['loss']:.4f}",
        "tau": f"{row['tau']:.5f}",
        "lr": f"{row['lr']:.1e}",
        "img/s": f"{row['images_per_s']:.0f}",
        "data wait": f"{row['data_wait']:.0%}",
        "skipped": str(row.get("skipped", 0)),
    }


def sample_images(dataset: Any, count: int, seed: int = 0, tries: int = 64) -> List[Tensor]:
    """Up to ``count`` readable images of ``dataset`` drawn at random (seeded), for pictures of the data.

    Looks at ``tries`` items at most (unreadable ones are passed over).

    Example:
        >>> items = [(torch.full((1, 2, 2), i), i, None) for i in range(10)]
        >>> [int(x.max()) for x in sample_images(items, 3, seed=0)] == [int(x.max()) for x in sample_images(items, 3)]
        True
    """
    generator = torch.Generator().manual_seed(seed)
    found: List[Tensor] = []
    for index in torch.randperm(len(dataset), generator=generator)[:tries].tolist():
        image = dataset[index][0]
        if image is not None:
            found.append(image)
        if len(found) == count:
            break
    return found


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"``, ``"2.1 h"``.

    Example:
        >>> format_duration(42), format_duration(210), format_duration(7560)
        ('42 s', '3.5 min', '2.1 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
