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
import time
from pathlib import Path
from typing import Any, Dict, Iterator, NoReturn, Optional, cast

import torch
from torch import Tensor

from ..core.checks import NonFiniteError
from . import data as data_module
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
from .data.cache import CachedImages, attach_run_cache
from .data.channels import to_device_float
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
    autocast,
)
from .run_files import claim
from .run_setup import RunSetup

ESTIMATE_AFTER_STEPS = 5  # the duration estimate is printed after this many steps (the first one not counted)


class _Window:
    """Time, data wait and images since the last metrics row."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start, self.data_wait, self.images = now, 0.0, 0


class Run(RunSetup):
    """One pretraining run: the set-up (:class:`RunSetup`), the step loop, checkpoints, the end."""

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
        self.log = MetricsLog(self.out, warn=self._warn)
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

