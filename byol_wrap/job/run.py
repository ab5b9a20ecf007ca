"""One pretraining run: set-up from the arguments, the step loop, checkpoints and the end.

:func:`byol_wrap.pretrain` builds a :class:`Run` and calls :meth:`Run.train`; the training loop reads top to
bottom in :meth:`Run.train`, and each thing it does per step (the next batch, the optimizer step, the metrics
row, the checkpoint) is one method below it.

Example:
    >>> from byol_wrap.job.run import Run                       # doctest: +SKIP
    >>> Run(World("cpu"), "digits", Path("runs/d"), "byol_wrap/small_cnn", options).train()  # doctest: +SKIP
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Tuple, cast

import torch
from torch import Tensor, nn

from ..core.byol import BYOL
from ..core.checks import NonFiniteError
from ..core.hooks import AmbiguousOutputError, UnknownLayerError
from . import data as data_module
from . import models as models_module
from .arguments import check_batch_fits, describe, length_flag, positive_int
from .checkpoint import (
    RunError,
    TrainingStopped,
    checkpoint_path,
    clean_temporary_files,
    get_rng_state,
    resume_state,
    save_checkpoint,
    set_rng_state,
)
from .data import channels as channels_module
from .data.cache import CachedImages, attach_run_cache
from .data.channels import to_device_float
from .fingerprint import fingerprint_data
from .monitor import (
    COLLAPSE_THRESHOLD,
    MetricsLog,
    ProjectionRecorder,
    bar_postfix,
    collapse_metric,
    format_duration,
    progress_bar,
)
from .neighbours import neighbours_png
from .recipe import (
    ADAM_LR,
    DEFAULT_EPOCHS,
    DIGITS_LR,
    DIGITS_STEPS,
    OPTIMIZERS,
    WARMUP_SHARE,
    autocast,
    digits_augmentation,
    resolve_precision,
)
from .run_dir import check_writable, inside_message
from .run_files import claim
from .schedule import CHECKPOINT_MINUTES, CheckpointSchedule
from .skipped import SkipReport
from .world import World

ESTIMATE_AFTER_STEPS = 5  # the duration estimate is printed after this many steps (the first one not counted)


class _Window:
    """Time, data wait and images since the last metrics row."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start, self.data_wait, self.images = now, 0.0, 0


class Run:
    """One pretraining run: set-up from the arguments, the step loop, checkpoints, the end."""

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

    # ------------------------------------------------------------------ the loop
    def train(self) -> Path:
        """Train from the last checkpoint (or step 0) to the last step; returns ``encoder.pt``'s path."""
        resumed = self._start()
        knn_before = self._knn_before(resumed)
        loader = self._loader()
        recorder = ProjectionRecorder(self.learner.projector)
        bar = progress_bar(self.total_steps, self.step, enabled=self.verbose and bool(self.options["progress"]))
        window = _Window()
        start_step, run_start = self.step, time.perf_counter()
        self.checkpoints.done()
        step_sleep = float(os.environ.get("BYOL_WRAP_TEST_STEP_SLEEP", "0"))  # test hook: time to kill -9 a run
        try:
            for images in self._batches(loader, window):
                recorder.take()  # forget projections of anything but this step (e.g. a kNN evaluation)
                loss = self._train_step(images)
                self.step += 1
                if step_sleep:
                    time.sleep(step_sleep)
                window.images += images.shape[0] * self.world.size
                bar.update(1)
                self._estimate_duration(start_step)
                checkpoint_now = self.checkpoints.due(self.step)
                if self.step % self.log_every == 0 or checkpoint_now:
                    row = self._log_row(loss, recorder.take(), window,
                                        checkpoint_now and self.checkpoints.by_steps(self.step))
                    bar.set_postfix(bar_postfix(row), refresh=False)
                if checkpoint_now and self.step != self.total_steps:
                    self._checkpoint()
            knn_after = self._knn_after()
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
        neighbours_png(self, encoder)
        self._summary(start_step, time.perf_counter() - run_start, encoder, knn_before, knn_after)
        return encoder

    def _start(self) -> bool:
        """Resume from the last checkpoint if there is one, open the metrics log, say what runs."""
        if self.world.main:
            clean_temporary_files(self.out)
        resumed = self._resume()
        if not resumed and self.world.main:
            self._say(claim(self.out, bool(self.options["overwrite"])))
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
                  f"{self.device}, {torch.get_num_threads()} CPU thread(s)")
        for note in self.notes:
            self._say(note)
        if resumed:
            self._say(f"resuming from step {self.step} ({checkpoint_path(self.out)})")
        elif self.world.main:
            self._augmentation_plot()
        return resumed

    def _attach_cache(self) -> None:
        """Read a folder's decoded images through the image cache (``--cache``; docs/cache-and-loader.md)."""
        self.dataset = attach_run_cache(self.dataset, self.options["cache"], self.out, self.world,
                                        bool(self.options["overwrite"]), say=self._say)

    def _batches(self, loader: Any, window: _Window) -> Iterator[Tensor]:
        """The training batches from the current position on, epoch after epoch, until the last step."""
        iterator = None
        empty_batches = 0
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
            except data_module.UnreadableImageError as error:
                raise RunError(str(error)) from error
            window.data_wait += time.perf_counter() - wait_start
            self._skipped(batch)
            self.batch_in_epoch += 1
            if self.batch_in_epoch >= self.batches_per_epoch:
                self.epoch, self.batch_in_epoch, iterator = self.epoch + 1, 0, None
            if batch.images.shape[0] < 2:  # (nearly) every image of this batch was unreadable
                empty_batches += 1
                if empty_batches > self.batches_per_epoch:
                    raise RunError(f"no readable images in a whole epoch of {self.arguments['data']} "
                                   f"(see {self.out / 'skipped.txt'})")
                continue
            empty_batches = 0
            yield batch.images

    def _train_step(self, images: Tensor) -> Tensor:
        images = to_device_float(images.to(self.device, non_blocking=True), self.pixel_format)
        with autocast(self.precision, self.device):
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

    def _log_row(self, loss: Tensor, projections: Optional[Tensor], window: _Window,
                 evaluate: bool) -> Dict[str, Any]:
        """One row of ``metrics.jsonl`` for the window since the last row (also shown on the progress bar)."""
        now = time.perf_counter()
        seconds = max(now - window.start, 1e-9)
        collapse = collapse_metric(projections) if projections is not None else None
        row = {"step": self.step, "epoch": self.epoch, "loss": self.world.mean(loss.item()),
               "tau": self.step_tau, "lr": self.step_lr,
               "images_per_s": window.images / seconds, "data_wait": window.data_wait / seconds,
               "collapse": collapse, "skipped": len(self.skips)}
        self.elapsed += seconds
        window.reset(now)
        self._warn_collapse(collapse)
        if evaluate and self.knn is not None and self.step != self.total_steps:  # kNN at step-interval checkpoints
            row["knn"] = self._knn()
        if self.world.main:
            self.log.append(row)
            self.log.flush(force=False)
        return row

    def _warn_collapse(self, collapse: Optional[float]) -> None:
        if collapse is None or collapse >= COLLAPSE_THRESHOLD:
            return
        if self.collapse_warned is not None and self.step - self.collapse_warned < self.checkpoints.every:
            return  # loud, but once per checkpoint interval
        self.collapse_warned = self.step
        self._warn(f"WARNING: the representations may be collapsing: collapse metric {collapse:.3f} "
                   f"< {COLLAPSE_THRESHOLD} at step {self.step} (healthy runs stay near 1). "
                   f"Try a lower --lr, a larger --batch-size or another --hidden-layer.")

    def _estimate_duration(self, start_step: int) -> None:
        """After the first few steps, say how long the rest will take (the first step, a warm-up, not counted)."""
        done = self.step - start_step
        if done == 1:
            self.timing_start = time.perf_counter()
        elif done == 1 + ESTIMATE_AFTER_STEPS and self.step < self.total_steps:
            per_step = (time.perf_counter() - self.timing_start) / ESTIMATE_AFTER_STEPS
            remaining = per_step * (self.total_steps - self.step)
            self._say(f"estimated time for the remaining {self.total_steps - self.step} steps: "
                      f"{format_duration(remaining)} ({per_step:.2f} s/step)")

    # ------------------------------------------------------------------ checkpoint
    def _state(self, finished: bool) -> Dict[str, Any]:
        rng = self.world.gather(get_rng_state())
        if self.world.distributed:  # every rank's unreadable files (each decodes its own shard)
            for rank_items in self.world.gather(self.skips.items):
                self.skips.add(rank_items, quiet=True)
        return {
            "format": "byol-wrap-run", "version": 1, "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": rng,
            "arguments": self.arguments, "finished": finished,
            "skipped": [list(item) for item in self.skips.items], "knn": [list(item) for item in self.knn_history],
            "elapsed": self.elapsed, "encoder": self._encoder_meta(), "data_fingerprint": self.fingerprint,
        }

    def _resume(self) -> bool:
        overwrite = bool(self.options["overwrite"])
        state = resume_state(self.out, self.arguments, overwrite and self.world.main, self.fingerprint,
                             bool(self.options["allow_data_change"]), self._warn) \
            if self.world.main or not overwrite else None
        self.world.barrier()
        if not self.world.main and overwrite:
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
        self.skips.add([tuple(item) for item in state.get("skipped", [])], quiet=True)
        self.checkpointed_step = self.step
        self.knn_history = [(int(s), float(a)) for s, a in state.get("knn", [])]
        self.elapsed = float(state.get("elapsed", 0.0))
        rng = state["rng"]
        set_rng_state(rng[self.world.rank] if self.world.rank < len(rng) else rng[0])
        return True

    def _checkpoint(self, finished: bool = False) -> None:
        state = self._state(finished)
        if isinstance(self.dataset, CachedImages):
            self.dataset.sync()  # the records decoded so far become durable with the checkpoint
        if self.world.main:
            self.log.flush()              # metrics first: on resume, rows beyond the checkpoint are dropped
            self.skips.write(self.out / "skipped.txt")  # rewritten only when files were skipped since the last
            save_checkpoint(state, self.out)
            self.checkpointed_step = self.step
            from .monitor import plot_training

            plot_training(self.log, self.out / "plots" / "training.png")
        self.checkpoints.done()
        self.world.barrier()

    # ------------------------------------------------------------------ kNN
    def _knn(self) -> Optional[float]:
        if self.knn is None or not self.world.main:
            return None
        from ..core.knn import knn_eval

        def encode(x: Tensor) -> Tensor:
            with autocast(self.precision, self.device):
                return cast(Tensor, self.learner(to_device_float(x.to(self.device), self.pixel_format),
                                                 return_embedding=True, return_projection=False)).float()

        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            accuracy = knn_eval(encode, *self.knn, module=self.learner, batch_size=256)
        self.knn_history.append((self.step, accuracy))
        return accuracy

    def _knn_before(self, resumed: bool) -> Optional[float]:
        if resumed or self.knn is None:
            return self.knn_history[0][1] if self.knn_history else None
        accuracy = self._knn()
        if accuracy is not None:
            self._say(f"kNN accuracy before: {accuracy:.2%}")
            self.log.append({"step": 0, "knn": accuracy})
        return accuracy

    def _knn_after(self) -> Optional[float]:
        accuracy = self._knn()
        if accuracy is not None and self.world.main and self.log.rows:
            self.log.rows[-1]["knn"] = accuracy
        return accuracy

    # ------------------------------------------------------------------ data, plots, messages
    def _loader(self) -> Any:
        return data_module.make_loader(
            self.dataset, self.batch_size, workers=self.options["workers"], seed=self.options["seed"],
            epoch=self.epoch, rank=self.world.rank, world_size=self.world.size,
            pin_memory=self.device.type == "cuda", skip_batches=self.batch_in_epoch,
            strict=bool(self.options["strict"]))

    def _augmentation_plot(self) -> None:
        """``plots/augmentations.png``: 8 images drawn at random (seeded by ``--seed``) and their two views."""
        from .monitor import plot_augmentations, sample_images

        found = sample_images(self.dataset, 8, seed=self.options["seed"])
        if not found:
            return
        images = torch.stack(found)
        learner = self.learner
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []), \
                torch.no_grad():
            x = to_device_float(images.to(self.device), self.pixel_format)
            x = x.float() / 255 if x.dtype == torch.uint8 else x
            view1, view2 = learner.augment1(x), learner.augment2(x)
        # the views are shown before the learner's normalisation, as the net's input minus that last step
        photo = self.pixel_format.is_photo
        plot_augmentations(images if photo else x.cpu(), view1, view2, self.out / "plots" / "augmentations.png",
                           stretch=not photo)

    def _say(self, message: str) -> None:
        if self.verbose and message:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stdout)

    def _warn(self, message: str) -> None:
        if self.world.main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    def _diverged(self, what: str) -> NoReturn:
        path = checkpoint_path(self.out)
        kept = f"the last good checkpoint {path} is untouched" if path.exists() else "no checkpoint was written"
        raise TrainingStopped(
            f"training stopped at step {self.step + 1}: {what} (diverged); {kept}. "
            f"Lower --lr (now {self.lr:g}){', or use --precision 32' if self.precision != '32' else ''}, "
            f"then start again with --overwrite")

    def _skipped(self, batch: Any) -> None:
        """Record the batch's unreadable files (``--strict``: stop at the first); stop when most of the first
        thousand files (or of the data) cannot be decoded."""
        if batch.skipped and self.options["strict"]:
            path, reason = batch.skipped[0]
            raise RunError(f"cannot decode {path}: {reason} (--strict stops at the first unreadable image)")
        self.skips.add(batch.skipped)
        self.skips.observe(len(batch.images) + len(batch.skipped), len(batch.skipped))
        # decided by each process on its own files, without a collective: under torchrun a batch skipped on one
        # rank only puts the ranks' batch counts out of step (torchrun ends the others when one stops)
        if self.skips.too_many(len(self.dataset) // self.world.size):
            if self.world.main:
                self.skips.write(self.out / "skipped.txt")
            raise RunError(self.skips.too_many_message(self.arguments["data"], self.out / "skipped.txt"))

    # ------------------------------------------------------------------ the end
    def _encoder_meta(self) -> Dict[str, Any]:
        """What ``export_encoder`` records besides the weights (also kept in last.pt for ``export``)."""
        normalizer = self.learner.normalizer
        normalize = None if normalizer is None else [normalizer.mean.tolist(), normalizer.std.tolist()]
        return {"model_spec": self.model_spec, "hidden_layer": self.hidden_layer, "image_size": self.image_size,
                "normalize": normalize, "representation_size": int(self.learner.representation_size),
                "extra": {"channels": self.pixel_format.channels, "pixel_format": self.pixel_format.as_dict()}}

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
                  + (f"; {self.skips.summary()} (skipped.txt)" if len(self.skips) else ""))
        if after is not None:
            self._say(f"kNN accuracy after:  {after:.2%}" + (f" (before: {before:.2%})" if before is not None else ""))

