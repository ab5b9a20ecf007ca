"""The set-up of a pretraining run: from the arguments to the data, the network, the learner and the optimizer.

:class:`RunSetup` checks the arguments, opens the data, builds the model, learner and optimizer, and records the
run's arguments; :class:`byol_wrap.job.run.Run` adds the training loop, checkpoints and the end on top of it.

Example:
    >>> from byol_wrap.job.run_setup import RunSetup               # doctest: +SKIP
    >>> RunSetup(World("cpu"), "digits", Path("runs/d"), "byol_wrap/small_cnn", options).learner  # doctest: +SKIP
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, cast

import torch
from torch import Tensor, nn

from ..core.byol import BYOL
from ..core.hooks import AmbiguousOutputError, UnknownLayerError
from . import data as data_module
from . import models as models_module
from .arguments import check_batch_fits, describe, length_flag, positive_int
from .checkpoint import (
    RunError,
)
from .data import channels as channels_module
from .fingerprint import fingerprint_data
from .recipe import (
    ADAM_LR,
    DEFAULT_EPOCHS,
    DIGITS_LR,
    DIGITS_STEPS,
    OPTIMIZERS,
    WARMUP_SHARE,
    digits_augmentation,
    resolve_precision,
)
from .run_dir import check_writable, inside_message
from .schedule import CHECKPOINT_MINUTES, CheckpointSchedule
from .skipped import SkipReport
from .world import World


class RunSetup:
    """A run's set-up from its arguments (the loop is :class:`byol_wrap.job.run.Run`'s)."""

    def __init__(self, world: World, data: Any, out: Path, model: Any, options: Dict[str, Any]) -> None:
        self.world, self.out, self.options = world, out, options
        self.notes: List[str] = []  # lines about the data and model, said when the run starts
        self.verbose = world.main
        self.device = world.device
        self._check_options()
        if world.main:
            check_writable(out)
        world.barrier()
        self.is_digits = data is None or (isinstance(data, str) and data == "digits" and not Path(data).exists())
        self.skips = SkipReport(warn=self._warn)
        self.dataset = self._open_data("digits" if data is None else data, options["image_size"], model)
        self.fingerprint = fingerprint_data(data, self.dataset)
        self._size_run(len(self.dataset))
        self._seed(options["seed"])  # everything random from here on (initialisation, augmentations)
        self._build_net(model)
        self.learner = self._build_learner()
        self.optimizer, self.scheduler, self.lr = self._build_optimizer()
        self.arguments = self._arguments(data, model)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "16" else None
        self.model = self._distributed(self.learner)
        self.knn = self._knn_data()
        self.step = self.epoch = self.batch_in_epoch = 0
        self.knn_history: List[Tuple[int, float]] = []
        self.elapsed = 0.0
        self.checkpointed_step: Optional[int] = None
        self.collapse_warned: Optional[int] = None
        self.step_lr = self.step_tau = 0.0

    # ------------------------------------------------------------------ construction
    def _check_options(self) -> None:
        options = self.options
        if options["optimizer"] not in OPTIMIZERS:
            raise RunError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {options['optimizer']!r}")
        if options["steps"] is not None and options["epochs"] is not None:
            raise RunError("give --steps or --epochs, not both")
        self.precision = resolve_precision(options["precision"], self.device)
        seed = options["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise RunError(f"--seed must be a non-negative integer, got {seed!r}")
        workers = options["workers"]
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise RunError(f"--workers must be a non-negative integer, got {workers!r}")

    def _open_data(self, data: Any, image_size: Optional[int], model: Any) -> Any:
        """The training Dataset and the resolved ``self.image_size``.

        Default view size: 32 for digits, the arrays' side for in-memory images, 96 for
        ``byol_wrap/small_cnn`` and 224 for other models reading image files.
        """
        strict = bool(self.options["strict"])
        if image_size is not None:
            self.image_size = positive_int("image_size", image_size)
        if self.is_digits:
            self.image_size = self.image_size if image_size is not None else 32
            digits = data_module.digits_dataset(self.image_size, strict)  # also when a folder named "digits" is here
            self.pixel_format, _ = channels_module.dataset_format(digits, self.options["channels"])
            return digits
        is_file_data = isinstance(data, (str, os.PathLike)) and not str(data).lower().endswith(".npz")
        if image_size is None and is_file_data:
            small = isinstance(model, str) and model.strip().startswith("byol_wrap/")
            self.image_size = 96 if small else 224
        load_size = data_module.default_load_size(self.image_size) if image_size is not None or is_file_data else None
        dataset = data_module.open_images(data, load_size, strict, exclude=[self.out] if is_file_data else [])
        self._say(inside_message(self.out, data) if is_file_data else "")
        self.skips.add(getattr(dataset, "scan_skipped", []))  # folders not readable, links not followed
        if image_size is None and not is_file_data:
            self.image_size = min(cast(Any, dataset).load_size)
        self.pixel_format, line = channels_module.dataset_format(dataset, self.options["channels"])
        self.notes.append(line)
        return dataset

    def _size_run(self, size: int) -> None:
        """Batch size, steps per epoch, run length, checkpoint and log intervals."""
        options, world = self.options, self.world
        self.batch_size = positive_int(
            "batch_size", options["batch_size"] or (256 if self.device.type == "cuda" else 128))
        if self.batch_size < 2:
            raise RunError("--batch-size must be at least 2 (BYOL's BatchNorm layers need 2 samples)")
        check_batch_fits(self.batch_size, size, world.size)
        self.batches_per_epoch = data_module.batches_per_epoch(size, self.batch_size, world.size)
        if options["steps"] is not None:
            self.total_steps = positive_int("steps", options["steps"])
        else:
            epochs = options["epochs"]
            if epochs is None and not self.is_digits:
                epochs = DEFAULT_EPOCHS
            self.total_steps = (DIGITS_STEPS if epochs is None
                                else positive_int("epochs", epochs) * self.batches_per_epoch)
        self.checkpoints = CheckpointSchedule(self.total_steps, options["checkpoint_every"],
                                              options.get("checkpoint_minutes", CHECKPOINT_MINUTES),
                                              world.any if world.distributed else None)
        self.log_every = positive_int("log_every", options["log_every"])

    @staticmethod
    def _seed(seed: int) -> None:
        import random

        torch.manual_seed(seed)
        random.seed(seed)
        try:
            import numpy as np

            np.random.seed(seed)  # noqa: NPY002 - the global generator user code may draw from
        except ImportError:  # pragma: no cover
            pass

    def _build_net(self, model: Any) -> None:
        self.model_spec = model if isinstance(model, str) else None
        self.net = models_module.build_model(model, self.options["weights"], self.image_size,
                                             channels=self.pixel_format.channels, notes=self.notes)
        self.hidden_layer = self.options["hidden_layer"]
        if self.hidden_layer is None:
            self.hidden_layer = models_module.default_hidden_layer(model, self.net)
        self.net.to(self.device)
        if self.world.distributed and self.device.type == "cuda":
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)

    def _build_learner(self) -> BYOL:
        from ..core.augment import IMAGENET_MEAN, IMAGENET_STD

        kwargs: Dict[str, Any] = {}
        if self.device.type == "cpu":
            kwargs["sync_batchnorm"] = False  # torch has no SyncBatchNorm on CPU: each process's own statistics
        if self.is_digits:
            kwargs.update(augment_fn=digits_augmentation(self.image_size),
                          normalize=(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)))
        elif channels_module.uses_data_statistics(self.pixel_format):
            kwargs["normalize"] = self._statistics()
        channels = self.pixel_format.channels
        try:
            return BYOL(self.net, image_size=self.image_size, hidden_layer=self.hidden_layer,
                        input_shape=(channels, self.image_size, self.image_size),
                        total_steps=self.total_steps, moving_average_decay=self.options["moving_average_decay"],
                        projection_size=positive_int("projection_size", self.options["projection_size"]),
                        projection_hidden_size=positive_int("projection_hidden_size",
                                                            self.options["projection_hidden_size"]),
                        **kwargs)
        except (UnknownLayerError, AmbiguousOutputError) as error:
            if self.model_spec is None:
                raise
            # the library's message names the Python call; the command's users want the command
            raise ValueError(f"{error} On the command line: byol-wrap layers {self.model_spec} "
                             f"--image-size {self.image_size}") from error
        except ValueError as error:
            if channels == 3:
                raise
            raise ValueError(f"{error} This run's images have {channels} channel(s) (--channels): the model must "
                             f"take {channels}-channel input, or pass --channels to match it.") from error

    def _statistics(self) -> Tuple[List[float], List[float]]:
        """Per-channel mean and std of a sample of the training images (the learner's normalisation)."""
        start = time.perf_counter()
        statistics, line = channels_module.dataset_statistics(self.dataset, self.pixel_format, self.options["workers"])
        self.notes.append(f"{line}, {time.perf_counter() - start:.1f} s")
        return statistics

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
        arguments = {key: describe(value) for key, value in self.options.items()}
        arguments.update(
            data="digits" if self.is_digits else (str(Path(data).resolve()) if isinstance(data, (str, os.PathLike))
                                                  else describe(data)),
            model=describe(model), hidden_layer=describe(self.hidden_layer), image_size=self.image_size,
            batch_size=self.batch_size, total_steps=self.total_steps, precision=self.precision,
            world_size=self.world.size, device_type=self.device.type,
            length=length_flag(self.options["steps"], self.options["epochs"], self.total_steps))
        arguments["weights"] = str(Path(arguments["weights"]).resolve()) if arguments["weights"] else None
        for key in ("steps", "epochs", "lr", "device"):
            arguments.pop(key, None)  # folded into total_steps / the learning rate / device_type
        arguments["lr"] = self.lr
        return arguments

    def _distributed(self, learner: BYOL) -> nn.Module:
        if not self.world.distributed:
            return learner
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(learner, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _knn_data(self) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        knn_data = self.options["knn_data"]
        if knn_data is not None:
            fmt = None if self.pixel_format.is_photo else self.pixel_format
            return data_module.load_labelled(knn_data, self.image_size, fmt=fmt)
        return data_module.load_digits(self.image_size) if self.is_digits else None

    # ------------------------------------------------------------------ messages
    def _say(self, message: str) -> None:
        if self.verbose and message:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stdout)

    def _warn(self, message: str) -> None:
        if self.world.main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)
