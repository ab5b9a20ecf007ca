"""``pretrain``: the main job. A folder of images (or digits, a ``.npz``, a ``Dataset``) in, an encoder out.

Everything the run writes goes into ``out`` (RUN_DIR):

- ``checkpoints/last.pt``: all that an exact continuation needs (see :mod:`byol_wrap.job.checkpoint`),
- ``encoder.pt``: the trained backbone with its metadata (:func:`byol_wrap.load_encoder` reads it),
- ``metrics.jsonl`` (and TensorBoard events under ``tensorboard/`` when tensorboard is installed),
- ``plots/training.png`` and ``plots/augmentations.png``,
- ``skipped.txt``: the files that could not be decoded, with the reason.

Run the same call (or command) again after a crash and it continues from the last checkpoint,
reproducing the losses of an uninterrupted run; a finished run, or one made with other arguments,
is refused unless ``overwrite=True``.

Example:
    >>> from byol_wrap import pretrain                                        # doctest: +SKIP
    >>> encoder_path = pretrain("photos/", out="runs/photos", model="torchvision/resnet18",
    ...                         image_size=96, batch_size=64, epochs=20)     # doctest: +SKIP
    >>> encoder = byol_wrap.load_encoder(encoder_path)                        # doctest: +SKIP
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor, nn

from ..core.byol import BYOL
from ..core.checks import NonFiniteError
from .checkpoint import (
    RunError,
    TrainingStopped,
    checkpoint_path,
    clean_temporary_files,
    get_rng_state,
    load_checkpoint,
    resume_state,
    save_checkpoint,
    set_rng_state,
)
from .data.cache import CachedImages, CacheError, attach_cache, remove_run_cache

EXTRAS_MESSAGE = 'byol-wrap pretrain needs the training extras: pip install "byol-wrap[train]"'
DIGITS_STEPS = 300          # the built-in default run: ~1-3 minutes on 2 CPU cores
DEFAULT_EPOCHS = 100        # run length for your own data when neither steps nor epochs is given
ADAM_LR = 3e-4
DIGITS_LR = 2e-3            # Adam on the digits default (examples/pretrain.py's measured rate)
WARMUP_SHARE = 0.01         # the paper's warm-up: 10 of 1000 epochs
PRECISIONS = ("32", "bf16", "16")
OPTIMIZERS = ("adam", "lars")


def require_extras() -> None:
    """Raise one ``ImportError`` line naming the ``[train]`` extra when tqdm or matplotlib is missing."""
    missing = []
    for module in ("tqdm", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"{EXTRAS_MESSAGE} (missing: {', '.join(missing)})")


# ============================================================================ distributed
class _World:
    """torchrun's environment: rank, world size, the device of this process."""

    def __init__(self, device: Optional[str]) -> None:
        import torch.distributed as dist

        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.size > 1
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise RunError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:1, mps...)") from error
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunError(f"--device {device} asked for, but torch sees no CUDA device here; use --device cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.local_rank if self.distributed else torch.cuda.current_device())
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.initialised_here = False
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.initialised_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> List[Any]:
        """``obj`` of every rank (rank order); ``[obj]`` without torchrun."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        objects: List[Any] = [None] * self.size
        dist.all_gather_object(objects, obj)
        return objects

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(value)
        return bool(value.item() > 0)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (``value`` itself without torchrun)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(total)
        return float(total.item()) / self.size

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


# ============================================================================ recipe
def digits_augmentation(image_size: int) -> nn.Sequential:
    """Views for the built-in digits: the paper's T without flips (a mirrored 2 is no 2), milder crops
    (an 8 % crop of an 8x8 digit is a blob), jitter reduced to brightness and contrast, a small affine
    (examples/pretrain.py measured 65 % -> 80 % kNN in 300 steps with it). No normalisation: the
    learner applies ImageNet statistics after it.

    Example:
        >>> digits_augmentation(32)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomResizedCrop((image_size, image_size), scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)),
        K.RandomAffine(degrees=15, translate=(0.1, 0.1)),
        K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8),
        K.RandomGaussianBlur((3, 3), sigma=(0.1, 2.0), p=0.5),
    )


def _resolve_precision(precision: Optional[Union[str, int]], device: torch.device) -> str:
    if precision is None:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "32"
    precision = str(precision)
    if precision not in PRECISIONS:
        raise RunError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "16" and device.type != "cuda":
        raise RunError(f"--precision 16 needs a CUDA device (this run is on {device}); use 32 or bf16")
    return precision


def _autocast(precision: str, device: torch.device) -> Any:
    if precision == "32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RunError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    return value


def _check_writable(out: Path) -> None:
    """Create RUN_DIR and prove it writable, or raise one clear line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".byol-wrap-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write to RUN_DIR {out}: {error.strerror or error}; choose another --out") from error


def _describe(obj: Any) -> Any:
    """A comparable stand-in for arguments that are objects (a Dataset, an nn.Module)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, os.PathLike):
        return str(Path(obj).resolve())
    if isinstance(obj, nn.Module):
        return f"<{type(obj).__module__}.{type(obj).__name__}, {sum(p.numel() for p in obj.parameters())} parameters>"
    size = len(obj) if hasattr(obj, "__len__") else "?"
    return f"<{type(obj).__module__}.{type(obj).__name__} of {size} items>"


# ============================================================================ the run
def pretrain(
    data: Any = None,
    out: Union[str, os.PathLike] = "runs/byol",
    model: Union[str, nn.Module] = "byol_wrap/small_cnn",
    *,
    hidden_layer: Optional[Union[str, int]] = None,
    weights: Optional[Union[str, os.PathLike]] = None,
    image_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    steps: Optional[int] = None,
    epochs: Optional[int] = None,
    lr: Optional[float] = None,
    optimizer: str = "adam",
    predictor_lr_scale: float = 1.0,
    weight_decay: float = 0.0,
    moving_average_decay: float = 0.996,
    projection_size: int = 256,
    projection_hidden_size: int = 4096,
    workers: Optional[int] = None,
    cache: Optional[Union[str, os.PathLike]] = "auto",
    device: Optional[str] = None,
    precision: Optional[Union[str, int]] = None,
    checkpoint_every: Optional[int] = None,
    log_every: int = 10,
    knn_data: Optional[Union[str, os.PathLike]] = None,
    seed: int = 0,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> Path:
    """BYOL-pretrain ``model`` on ``data``, writing everything into ``out``; returns ``out/encoder.pt``.

    Args:
        data: a folder of images (searched recursively), a ``.npz`` with ``x_train`` (uint8 NHWC),
            ``"digits"`` or ``None`` (scikit-learn's digits, the built-in default), or a torch
            ``Dataset`` of images (uint8 or float ``(3, H, W)`` tensors, or ``(image, label)`` pairs).
        out: RUN_DIR.
        model: ``"torchvision/<name>"``, ``"timm/<name>"``, ``"byol_wrap/small_cnn"``,
            ``"<module or file.py>:<callable>"``, or an ``nn.Module``.
        hidden_layer: where the representation is read (default: per model family).
        weights: a local ``state_dict`` file to start from.
        image_size: side of the views (default: 32 for digits, the arrays' side for ``.npz``,
            96 for small_cnn and 224 for other models on folders).
        batch_size: per process (default 128 on CPU, 256 on GPU).
        steps, epochs: run length, one of them (default: 300 steps on digits, 100 epochs else).
        lr: peak learning rate (default: Adam 3e-4, 2e-3 on digits; LARS: 0.2 x global batch / 256).
        optimizer: ``"adam"`` (``byol_param_groups``) or ``"lars"`` (the paper's recipe).
        predictor_lr_scale: predictor learning rate = lr x this (Adam only; 1 = the paper's single rate).
        weight_decay: Adam's weight decay (LARS uses the paper's 1.5e-6).
        moving_average_decay: the target's base EMA decay (cosine schedule to 1 over the run).
        projection_size, projection_hidden_size: projector/predictor sizes (the paper's 256 and 4096).
        workers: DataLoader processes decoding images (default: 0 for arrays in memory,
            ``min(8, cpu count)`` for folders).
        cache: ``"auto"`` (default), ``"off"`` or a folder: keep the decoded images of a folder of image files
            so that later epochs (and resumed runs) read them back instead of decoding (bit-identical).
            ``"auto"`` uses ``out/cache/`` when it needs at most half the free disk space; a folder is used
            whenever it fits and may be shared by runs over the same data (see docs/cache-and-loader.md).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default: CUDA when available).
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (default: bf16 where the device supports it, 32 on CPU).
        checkpoint_every: steps between checkpoints (default: a tenth of the run, 50 to 1000).
        log_every: steps between rows of ``metrics.jsonl``.
        knn_data: labelled data (class subfolders or ``.npz`` with labels) for weighted kNN top-1
            at the start, at every checkpoint and at the end (digits: its own test split).
        seed: seeds initialisation, data order and augmentations.
        overwrite: delete the run files in ``out`` and start afresh.
        strict: stop at the first image that cannot be decoded instead of skipping it.
        progress: show the progress bar and messages.

    Raises:
        RunError: bad input (a ``ValueError``; the command line prints it and exits with 2).
        TrainingStopped: the loss became NaN/inf, a checkpoint could not be written...
            (a ``RuntimeError``; the last checkpoint is intact).
        ImportError: the ``[train]`` extra is missing.

    Example:
        >>> path = pretrain(out="runs/digits")            # doctest: +SKIP
        >>> pretrain(my_dataset, out="runs/mine", model=my_net, hidden_layer="avgpool",
        ...          image_size=64, steps=1000)           # doctest: +SKIP
    """
    require_extras()
    world = _World(device)
    created = _first_missing(Path(out))
    try:
        run = _Run(world, data, Path(out), model, dict(
            hidden_layer=hidden_layer, weights=weights, image_size=image_size, batch_size=batch_size, steps=steps,
            epochs=epochs, lr=lr, optimizer=optimizer, predictor_lr_scale=predictor_lr_scale,
            weight_decay=weight_decay, moving_average_decay=moving_average_decay, projection_size=projection_size,
            projection_hidden_size=projection_hidden_size, workers=workers, cache=cache,
            precision=precision, checkpoint_every=checkpoint_every, log_every=log_every, knn_data=knn_data,
            seed=seed, overwrite=overwrite, strict=strict, progress=progress))
        return run.train()
    except BaseException:
        if created is not None and world.main:
            _remove_if_empty(Path(out), created)
        raise
    finally:
        world.close()


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` (itself or a parent) that does not exist yet, else None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_if_empty(out: Path, created: Path) -> None:
    """Remove RUN_DIR and the parents this call created (up to ``created``) that a failure left empty."""
    folder = out
    while True:
        try:
            folder.rmdir()  # fails (and keeps the folder) unless it is empty
        except OSError:
            return
        if folder == created or folder.parent == folder:
            return
        folder = folder.parent


class _Run:
    """One pretraining run: set-up from the arguments, the step loop, checkpoints, the end."""

    def __init__(self, world: _World, data: Any, out: Path, model: Any, options: Dict[str, Any]) -> None:
        self.world, self.out, self.options = world, out, options
        self.verbose = world.main
        self.device = world.device
        if options["optimizer"] not in OPTIMIZERS:
            raise RunError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {options['optimizer']!r}")
        if options["steps"] is not None and options["epochs"] is not None:
            raise RunError("give --steps or --epochs, not both")
        self.precision = _resolve_precision(options["precision"], self.device)
        seed = options["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise RunError(f"--seed must be a non-negative integer, got {seed!r}")
        if world.main:
            _check_writable(out)
        world.barrier()

        from . import data as data_module

        self.data_module = data_module
        self.is_digits = data is None or (isinstance(data, str) and data == "digits" and not Path(data).exists())
        self.dataset = self._open_data("digits" if data is None else data, options["image_size"], model)
        size = len(self.dataset)
        batch_size = options["batch_size"] or (256 if self.device.type == "cuda" else 128)
        self.batch_size = _positive_int("batch_size", batch_size)
        if self.batch_size < 2:
            raise RunError("--batch-size must be at least 2 (BYOL's BatchNorm layers need 2 samples)")
        if self.batch_size * world.size > size:
            raise RunError(
                f"--batch-size {self.batch_size}{f' x {world.size} processes' if world.distributed else ''} is "
                f"larger than the data set ({size} images); use --batch-size {max(2, size // world.size)} or less"
            )
        self.batches_per_epoch = data_module.batches_per_epoch(size, self.batch_size, world.size)
        if options["steps"] is not None:
            self.total_steps = _positive_int("steps", options["steps"])
        else:
            epochs = options["epochs"]
            if epochs is None and not self.is_digits:
                epochs = DEFAULT_EPOCHS
            self.total_steps = (DIGITS_STEPS if epochs is None
                                else _positive_int("epochs", epochs) * self.batches_per_epoch)
        self.checkpoint_every = _positive_int(
            "checkpoint_every", options["checkpoint_every"] or min(1000, max(100, self.total_steps // 10)))
        self.log_every = _positive_int("log_every", options["log_every"])

        # Everything random from here on (initialisation, augmentations) follows the seed.
        torch.manual_seed(seed)
        import random

        random.seed(seed)
        try:
            import numpy as np

            np.random.seed(seed)  # noqa: NPY002 - the global generator user code may draw from
        except ImportError:  # pragma: no cover
            pass

        from . import models as models_module

        self.model_spec = model if isinstance(model, str) else None
        self.net = models_module.build_model(model, options["weights"], self.image_size)
        self.hidden_layer = options["hidden_layer"]
        if self.hidden_layer is None:
            self.hidden_layer = models_module.default_hidden_layer(model, self.net)
        self.net.to(self.device)
        if world.distributed and self.device.type == "cuda":
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.learner = self._build_learner()
        self.optimizer, self.scheduler, self.lr = self._build_optimizer()
        self.arguments = self._arguments(data, model)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "16" else None
        self.model: nn.Module = self.learner
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.learner, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        knn_data = options["knn_data"]
        self.knn: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]
        if knn_data is not None:
            self.knn = data_module.load_labelled(knn_data, self.image_size)
        else:
            self.knn = data_module.load_digits(self.image_size) if self.is_digits else None

        self.step = self.epoch = self.batch_in_epoch = 0
        self.skipped: List[Tuple[str, str]] = []
        self.knn_history: List[Tuple[int, float]] = []
        self.elapsed = 0.0

    # ------------------------------------------------------------------ construction
    def _open_data(self, data: Any, image_size: Optional[int], model: Any) -> Any:
        """The training Dataset (J1's ``data.open_images``) and the resolved ``self.image_size``.

        Default view size: 32 for digits, the arrays' side for in-memory images, 96 for
        ``byol_wrap/small_cnn`` and 224 for other models reading image files.
        """
        dm = self.data_module
        strict = bool(self.options["strict"])
        if image_size is not None:
            self.image_size = _positive_int("image_size", image_size)
        if self.is_digits:
            self.image_size = self.image_size if image_size is not None else 32
            return dm.digits_dataset(self.image_size, strict)  # also when a folder named "digits" is here
        is_file_data = isinstance(data, (str, os.PathLike)) and not str(data).lower().endswith(".npz")
        if image_size is None and is_file_data:
            small = isinstance(model, str) and model.strip().startswith("byol_wrap/")
            self.image_size = 96 if small else 224
        load_size = dm.default_load_size(self.image_size) if image_size is not None or is_file_data else None
        dataset = dm.open_images(data, load_size, strict)
        if image_size is None and not is_file_data:
            self.image_size = min(dataset.load_size)
        return dataset

    def _build_learner(self) -> BYOL:
        from ..core.augment import IMAGENET_MEAN, IMAGENET_STD

        kwargs: Dict[str, Any] = {}
        if self.device.type == "cpu":
            kwargs["sync_batchnorm"] = False  # torch has no SyncBatchNorm on CPU: each process's own statistics
        if self.is_digits:
            kwargs.update(augment_fn=digits_augmentation(self.image_size),
                          normalize=(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)))
        try:
            return BYOL(self.net, image_size=self.image_size, hidden_layer=self.hidden_layer,
                        total_steps=self.total_steps, moving_average_decay=self.options["moving_average_decay"],
                        projection_size=_positive_int("projection_size", self.options["projection_size"]),
                        projection_hidden_size=_positive_int("projection_hidden_size",
                                                             self.options["projection_hidden_size"]),
                        **kwargs)
        except ValueError as error:
            if self.model_spec is None or "print_layers" not in str(error):
                raise
            # the library's message names the Python call; the command's users want the command
            raise ValueError(f"{error} On the command line: byol-wrap layers {self.model_spec} "
                             f"--image-size {self.image_size}") from error

    def _build_optimizer(self) -> Tuple[torch.optim.Optimizer, Any, float]:
        from ..core.optim import byol_param_groups, lars_optimizer, scaled_lr, warmup_cosine_scheduler

        warmup = min(self.total_steps, max(1, round(WARMUP_SHARE * self.total_steps)))
        if self.options["lr"] is not None and not self.options["lr"] > 0:
            raise RunError(f"--lr must be positive, got {self.options['lr']}")
        if self.options["optimizer"] == "lars":
            lr = self.options["lr"] or scaled_lr(self.batch_size * self.world.size)
            optimizer = lars_optimizer(self.learner, lr=lr)
        else:
            lr = self.options["lr"] or (DIGITS_LR if self.is_digits else ADAM_LR)
            optimizer = torch.optim.Adam(byol_param_groups(self.learner, lr, self.options["predictor_lr_scale"],
                                                           self.options["weight_decay"]))
        return optimizer, warmup_cosine_scheduler(optimizer, self.total_steps, warmup), float(lr)

    def _arguments(self, data: Any, model: Any) -> Dict[str, Any]:
        """The run's arguments, resolved (defaults filled in), as saved in last.pt."""
        arguments = {key: _describe(value) for key, value in self.options.items()}
        arguments.update(
            data="digits" if self.is_digits else (str(Path(data).resolve()) if isinstance(data, (str, os.PathLike))
                                                  else _describe(data)),
            model=_describe(model), hidden_layer=_describe(self.hidden_layer), image_size=self.image_size,
            batch_size=self.batch_size, total_steps=self.total_steps, precision=self.precision,
            world_size=self.world.size, device_type=self.device.type)
        arguments["weights"] = str(Path(arguments["weights"]).resolve()) if arguments["weights"] else None
        for key in ("steps", "epochs", "lr", "device"):
            arguments.pop(key, None)  # folded into total_steps / the learning rate / device_type
        arguments["lr"] = self.lr
        return arguments

    # ------------------------------------------------------------------ checkpoint
    def _state(self, finished: bool) -> Dict[str, Any]:
        rng = self.world.gather(get_rng_state())
        if self.world.distributed:  # every rank's unreadable files (each decodes its own shard)
            merged = list(dict.fromkeys(item for rank_items in self.world.gather(self.skipped) for item in rank_items))
            self.skipped = [tuple(item) for item in merged]
        return {
            "format": "byol-wrap-run", "version": 1, "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": rng,
            "arguments": self.arguments, "finished": finished,
            "skipped": [list(item) for item in self.skipped], "knn": [list(item) for item in self.knn_history],
            "elapsed": self.elapsed, "encoder": self._encoder_meta(),
        }

    def _resume(self) -> bool:
        state = resume_state(self.out, self.arguments, bool(self.options["overwrite"]) and self.world.main) \
            if self.world.main or not self.options["overwrite"] else None
        self.world.barrier()
        if not self.world.main and self.options["overwrite"]:
            state = None
        if state is None:
            return False
        path = checkpoint_path(self.out)
        try:
            self.learner.load_state_dict(state["learner"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise RunError(f"{path} does not fit this model ({str(error).splitlines()[0]}); "
                           f"use --overwrite to start afresh") from error
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), \
            int(state["batch_in_epoch"])
        self.skipped = [tuple(item) for item in state.get("skipped", [])]
        self.knn_history = [(int(s), float(a)) for s, a in state.get("knn", [])]
        self.elapsed = float(state.get("elapsed", 0.0))
        rng = state["rng"]
        set_rng_state(rng[self.world.rank] if self.world.rank < len(rng) else rng[0])
        return True

    def _checkpoint(self, finished: bool = False) -> None:
        state = self._state(finished)
        if self.world.main:
            self.log.flush()              # metrics first: on resume, rows beyond the checkpoint are dropped
            self._write_skipped()
            if isinstance(self.dataset, CachedImages):
                self.dataset.sync()  # the records decoded so far become durable with the checkpoint
            save_checkpoint(state, self.out)
            from .monitor import plot_training

            plot_training(self.log, self.out / "plots" / "training.png")
        self.world.barrier()

    def _write_skipped(self) -> None:
        from .io import atomic_write_text

        if self.skipped or (self.out / "skipped.txt").exists():
            atomic_write_text(self.out / "skipped.txt", "".join(f"{path}\t{reason}\n" for path, reason in self.skipped))

    def _attach_cache(self) -> None:
        """Read a folder's decoded images through the image cache (``--cache``); ``--overwrite`` first removes
        the run's own cache (never a ``--cache DIR`` elsewhere)."""
        if self.options["overwrite"] and self.world.main:
            removed = remove_run_cache(self.out)
            if removed:
                self._say(f"cache: removed the run's own cache ({', '.join(p.name for p in removed)})")
        self.world.barrier()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world.size))
        node = int(os.environ.get("GROUP_RANK", self.world.rank // max(1, local))) if local < self.world.size \
            else None
        mode = self.options["cache"]
        if not (mode is None or isinstance(mode, (str, os.PathLike))):
            raise RunError(f"--cache must be auto, off or a folder, got {mode!r}")
        try:
            self.dataset = attach_cache(self.dataset, mode, self.out, leader=self.world.local_rank == 0,
                                        gather=self.world.gather, node=node, say=self._say_local)
        except CacheError as error:
            raise RunError(str(error)) from error

    def _say_local(self, message: str) -> None:
        """A line from the leader of one machine (the main process's ``_say`` where there is one machine)."""
        if self.world.local_rank == 0:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stdout)

    # ------------------------------------------------------------------ kNN
    def _knn(self) -> Optional[float]:
        if self.knn is None or not self.world.main:
            return None
        from ..core.knn import embed, knn_accuracy

        x_train, y_train, x_test, y_test = self.knn
        learner = self.learner
        was_training = learner.training
        learner.eval()

        def encode(x: Tensor) -> Tensor:
            with _autocast(self.precision, self.device):
                representation: Tensor = learner(x.to(self.device), return_embedding=True, return_projection=False)
                return representation.float()

        try:
            with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
                accuracy = knn_accuracy(embed(encode, x_train, 256), y_train, embed(encode, x_test, 256), y_test)
        finally:
            learner.train(was_training)
        self.knn_history.append((self.step, accuracy))
        return accuracy

    # ------------------------------------------------------------------ loop
    def _loader(self) -> Any:
        workers = self.options["workers"]
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise RunError(f"--workers must be a non-negative integer, got {workers!r}")
        return self.data_module.make_loader(
            self.dataset, self.batch_size, workers=workers, seed=self.options["seed"], epoch=self.epoch,
            rank=self.world.rank, world_size=self.world.size, pin_memory=self.device.type == "cuda",
            skip_batches=self.batch_in_epoch, strict=bool(self.options["strict"]))

    def _augmentation_plot(self) -> None:
        from .monitor import plot_augmentations

        found: List[Tensor] = []
        for index in range(min(len(self.dataset), 64)):
            image = self.dataset[index][0]
            if image is not None:
                found.append(image)
            if len(found) == 8:
                break
        if not found:
            return
        images = torch.stack(found)
        learner = self.learner
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []), \
                torch.no_grad():
            x = images.to(self.device)
            x = x.float() / 255 if x.dtype == torch.uint8 else x
            view1, view2 = learner.augment1(x), learner.augment2(x)
        # the views are shown before the learner's normalisation, as the net's input minus that last step
        plot_augmentations(images, view1, view2, self.out / "plots" / "augmentations.png")

    def _say(self, message: str) -> None:
        if self.verbose:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stdout)

    def _warn(self, message: str) -> None:
        if self.world.main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    def train(self) -> Path:
        from .monitor import (
            COLLAPSE_THRESHOLD,
            MetricsLog,
            ProjectionRecorder,
            bar_postfix,
            collapse_metric,
            progress_bar,
        )

        if self.world.main:
            clean_temporary_files(self.out)
        resumed = self._resume()
        self._attach_cache()
        self.log = MetricsLog(self.out)
        if self.world.main:
            if resumed:
                self.log.resume(self.step)
            else:
                self.log.start()
        self._say(f"data: {self.arguments['data']} ({len(self.dataset)} images); model: {self.arguments['model']} "
                  f"(hidden layer {self.hidden_layer!r}, {self.learner.representation_size}-d), "
                  f"{self.image_size} px, batch {self.batch_size}"
                  f"{f' x {self.world.size} processes' if self.world.distributed else ''}, "
                  f"{self.total_steps} steps, {self.options['optimizer']} lr {self.lr:g}, precision {self.precision}, "
                  f"{self.device}")
        if resumed:
            self._say(f"resuming from step {self.step} ({checkpoint_path(self.out)})")
        elif self.world.main:
            self._augmentation_plot()
        knn_before = self.knn_history[0][1] if self.knn_history else None
        if not resumed and self.knn is not None:
            knn_before = self._knn()
            self._say(f"kNN accuracy before: {knn_before:.2%}")
            self.log.append({"step": 0, "knn": knn_before})

        loader = self._loader()
        self._loader_ref = loader
        recorder = ProjectionRecorder(self.learner.projector)
        bar = progress_bar(self.total_steps, self.step, enabled=self.verbose and bool(self.options["progress"]))
        window_start, data_wait, window_images = time.perf_counter(), 0.0, 0
        start_step, run_start = self.step, time.perf_counter()
        step_sleep = float(os.environ.get("BYOL_WRAP_TEST_STEP_SLEEP", "0"))  # test hook: time to kill -9 a run
        iterator = None
        empty_batches = 0
        collapse_warned: Optional[int] = None
        try:
            while self.step < self.total_steps:
                if iterator is None:
                    loader.set_epoch(self.epoch, self.batch_in_epoch)
                    iterator = iter(loader)
                wait_start = time.perf_counter()
                try:
                    # DataLoader draws its workers' base seed from the global RNG when an epoch starts
                    # (lazily, at the first next()): keep that draw out of the augmentations' RNG stream
                    with torch.random.fork_rng(devices=[]):
                        batch = next(iterator)
                except StopIteration:  # pragma: no cover - the epoch's batches are counted below
                    self.epoch, self.batch_in_epoch, iterator = self.epoch + 1, 0, None
                    continue
                except self.data_module.UnreadableImageError as error:
                    raise RunError(str(error)) from error
                data_wait += time.perf_counter() - wait_start
                images = batch.images
                if batch.skipped:
                    self._skipped(batch.skipped)
                self.batch_in_epoch += 1
                if self.batch_in_epoch >= self.batches_per_epoch:
                    self.epoch, self.batch_in_epoch, iterator = self.epoch + 1, 0, None
                if images.shape[0] < 2:  # (nearly) every image of this batch was unreadable
                    empty_batches += 1
                    if empty_batches > self.batches_per_epoch:
                        raise RunError(f"no readable images in a whole epoch of {self.arguments['data']} "
                                       f"(see {self.out / 'skipped.txt'})")
                    continue
                empty_batches = 0
                recorder.take()  # forget projections of anything but this step (e.g. a kNN evaluation)
                loss = self._train_step(images)
                self.step += 1
                if step_sleep:
                    time.sleep(step_sleep)
                window_images += images.shape[0] * self.world.size
                projections = recorder.take()
                bar.update(1)
                checkpoint_now = self.step % self.checkpoint_every == 0 or self.step == self.total_steps
                if self.step % self.log_every == 0 or checkpoint_now:
                    now = time.perf_counter()
                    seconds = max(now - window_start, 1e-9)
                    collapse = collapse_metric(projections) if projections is not None else None
                    row = {"step": self.step, "epoch": self.epoch, "loss": self.world.mean(loss.item()),
                           "tau": self.step_tau, "lr": self.step_lr,
                           "images_per_s": window_images / seconds, "data_wait": data_wait / seconds,
                           "collapse": collapse, "skipped": len(self.skipped)}
                    self.elapsed += seconds
                    window_start, data_wait, window_images = now, 0.0, 0
                    if collapse is not None and collapse < COLLAPSE_THRESHOLD and (
                            collapse_warned is None or self.step - collapse_warned >= self.checkpoint_every):
                        collapse_warned = self.step  # loud, but once per checkpoint interval
                        self._warn(f"WARNING: the representations may be collapsing: collapse metric {collapse:.3f} "
                                   f"< {COLLAPSE_THRESHOLD} at step {self.step} (healthy runs stay near 1). "
                                   f"Try a lower --lr, a larger --batch-size or another --hidden-layer.")
                    if checkpoint_now and self.knn is not None and self.step != self.total_steps:
                        row["knn"] = self._knn()
                    if self.world.main:
                        self.log.append(row)
                        self.log.flush(force=False)
                    bar.set_postfix(bar_postfix(row), refresh=False)
                if checkpoint_now and self.step != self.total_steps:
                    self._checkpoint()
            knn_after = self._knn()
            if knn_after is not None and self.world.main:
                self.log.rows[-1]["knn"] = knn_after
            self._checkpoint(finished=True)
        finally:
            bar.close()
            recorder.remove()
            loader.close()
            if isinstance(self.dataset, CachedImages):
                self.dataset.close()
            if self.world.main:
                self.log.close()
        encoder = self._export()
        self._summary(start_step, time.perf_counter() - run_start, encoder, knn_before, knn_after)
        return encoder

    def _train_step(self, images: Tensor) -> Tensor:
        images = images.to(self.device, non_blocking=True)
        with _autocast(self.precision, self.device):
            try:
                loss = self.model(images)
            except NonFiniteError as error:
                self._diverged(str(error).splitlines()[0])
        if self.world.any(not bool(torch.isfinite(loss.detach()).all())):
            self._diverged(f"the loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step_tau = self.learner.update_moving_average()
        return cast(Tensor, loss.detach())

    def _diverged(self, what: str) -> NoReturn:
        path = checkpoint_path(self.out)
        kept = f"the last good checkpoint {path} is untouched" if path.exists() else "no checkpoint was written"
        raise TrainingStopped(
            f"training stopped at step {self.step + 1}: {what} (diverged); {kept}. "
            f"Lower --lr (now {self.lr:g}){', or use --precision 32' if self.precision != '32' else ''}, "
            f"then start again with --overwrite")

    def _skipped(self, skipped: Sequence[Tuple[str, str]]) -> None:
        for path, reason in skipped:
            if self.options["strict"]:
                raise RunError(f"cannot decode {path}: {reason} (--strict stops at the first unreadable image)")
            if (path, reason) not in self.skipped:
                self.skipped.append((path, reason))
                self._warn(f"skipped {path}: {reason}")
        if self.world.main:
            self._write_skipped()

    def _encoder_meta(self) -> Dict[str, Any]:
        """What ``export_encoder`` records besides the weights (also kept in last.pt for ``export``)."""
        normalizer = self.learner.normalizer
        normalize = None if normalizer is None else [normalizer.mean.tolist(), normalizer.std.tolist()]
        return {"model_spec": self.model_spec, "hidden_layer": self.hidden_layer, "image_size": self.image_size,
                "normalize": normalize, "representation_size": int(self.learner.representation_size)}

    def _export(self) -> Path:
        path = self.out / "encoder.pt"
        if self.world.main:
            from .encoder import export_encoder

            export_encoder(self.net, path, steps=self.step, **self._encoder_meta())
        self.world.barrier()
        return path

    def _summary(self, start_step: int, seconds: float, encoder: Path, before: Optional[float],
                 after: Optional[float]) -> None:
        steps = self.step - start_step
        rate = steps * self.batch_size * self.world.size / max(seconds, 1e-9)
        self._say(f"done: {self.step} steps ({steps} in this session, {seconds:.0f} s, {rate:.0f} images/s); "
                  f"encoder: {encoder}; run files: {self.out}"
                  + (f"; skipped {len(self.skipped)} unreadable files (skipped.txt)" if self.skipped else ""))
        if after is not None:
            self._say(f"kNN accuracy after:  {after:.2%}" + (f" (before: {before:.2%})" if before is not None else ""))


def export_run(run_dir: Union[str, os.PathLike], out: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Write the encoder of a run's ``checkpoints/last.pt`` (finished or not) to ``out``
    (default ``RUN_DIR/encoder.pt``); returns its path.

    Raises:
        RunError: no checkpoint, an unreadable one, or a run of an ``nn.Module`` given in Python
            (no spec to rebuild it from: call :func:`byol_wrap.job.encoder.export_encoder` yourself).

    Example:
        >>> export_run("runs/digits")                     # doctest: +SKIP
        PosixPath('runs/digits/encoder.pt')
    """
    from .encoder import export_encoder
    from .models import build_model

    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir)
    if not path.exists():
        what = "does not exist" if not run_dir.exists() else f"holds no checkpoint ({path} is missing)"
        raise RunError(f"RUN_DIR {run_dir} {what}; give the --out folder of a byol-wrap pretrain run")
    state = load_checkpoint(path)
    meta = dict(state["encoder"])
    if not meta.get("model_spec"):
        raise RunError(f"{path} is a run of a model given in Python ({state['arguments'].get('model')}); "
                       f"export it with byol_wrap.job.encoder.export_encoder(net, path, ...) from your own code")
    net = build_model(meta["model_spec"], image_size=meta["image_size"])
    prefix = "net."
    weights = {key[len(prefix):]: value for key, value in state["learner"].items() if key.startswith(prefix)}
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise RunError(f"{path}: the saved weights do not fit {meta['model_spec']} "
                       f"({str(error).splitlines()[0]})") from error
    target = Path(out) if out is not None else run_dir / "encoder.pt"
    return export_encoder(net, target, steps=int(state["step"]), **meta)
