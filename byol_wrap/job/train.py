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
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .checkpoint import RunError, write_stopped
from .io import FileWriteError
from .lock import RunLock
from .recipe import require_extras
from .run_dir import check_writable, first_missing, remove_if_empty
from .world import World


def pretrain(
    data: Any = None,
    out: Union[str, os.PathLike] = "runs/byol",
    model: Union[str, nn.Module] = "byol_wrap/small_cnn",
    *,
    hidden_layer: Optional[Union[str, int]] = None,
    weights: Optional[Union[str, os.PathLike]] = None,
    image_size: Optional[int] = None,
    channels: Union[str, int] = "auto",
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
    threads: Optional[int] = None,
    device: Optional[str] = None,
    precision: Optional[Union[str, int]] = None,
    checkpoint_every: Optional[int] = None,
    checkpoint_minutes: float = 10.0,
    log_every: int = 10,
    knn_data: Optional[Union[str, os.PathLike]] = None,
    seed: int = 0,
    overwrite: bool = False,
    strict: bool = False,
    allow_data_change: bool = False,
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
        channels: ``"auto"`` (the channel count of the image files, from their headers: a grey folder
            is a 1-channel run, 4-band TIFFs a 4-channel one, colour photos with some grey files RGB)
            or a count; files that do not fit are converted where nothing is lost (grey into RGB) or
            skipped with the reason in ``skipped.txt``. Bit depth is kept (docs/domain-imagery-command.md).
        batch_size: per process (default 128 on CPU, 256 on GPU).
        steps, epochs: run length, one of them (default: 300 steps on digits, 100 epochs else).
        lr: peak learning rate (default: Adam 3e-4, 2e-3 on digits; LARS: 0.2 x global batch / 256).
        optimizer: ``"adam"`` (``byol_param_groups``) or ``"lars"`` (the paper's recipe).
        predictor_lr_scale: predictor learning rate = lr x this (Adam only; 1 = the paper's single rate).
        weight_decay: Adam's weight decay (LARS uses the paper's 1.5e-6).
        moving_average_decay: the target's base EMA decay (cosine schedule to 1 over the run).
        projection_size, projection_hidden_size: projector/predictor sizes (the paper's 256 and 4096).
        workers: DataLoader processes decoding images (default: 0 for arrays in memory,
            the usable CPUs, at most 4, for folders).
        cache: ``"auto"`` (default), ``"off"`` or a folder: keep the decoded images of a folder of image files
            so that later epochs (and resumed runs) read them back instead of decoding (bit-identical).
            ``"auto"`` uses ``out/cache/`` when it needs at most half the free disk space; a folder is used
            whenever it fits and may be shared by runs over the same data (docs/cache-and-loader.md).
        threads: CPU threads for the training step (``torch.set_num_threads`` for the run, restored after;
            default: torch's own choice). On a CPU shared with other work, 1 can be several times faster.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default: CUDA when available).
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (default: bf16 where the device supports it, 32 on CPU).
        checkpoint_every: steps between checkpoints (default: a tenth of the run).
        checkpoint_minutes: also checkpoint when this much wall time passed since the last one
            (default 10; ``0``: by steps only), whichever of the two comes first.
        log_every: steps between rows of ``metrics.jsonl``.
        knn_data: labelled data (class subfolders or ``.npz`` with labels) for weighted kNN top-1
            at the start, at every checkpoint and at the end (digits: its own test split).
        seed: seeds initialisation, data order and augmentations.
        overwrite: delete the run files in ``out`` and start afresh.
        strict: stop at the first image that cannot be decoded instead of skipping it.
        allow_data_change: resume even though data files were added, removed or modified since the run
            started (detected from the file list, sizes and times; its losses then differ from an
            uninterrupted run's).
        progress: show the progress bar and messages.

    Raises:
        RunError: bad input (a ``ValueError``; the command line prints it and exits with 2).
        TrainingStopped: the loss became NaN/inf, a file could not be written (a full disk)...
            (a ``RuntimeError``; the last checkpoint is intact).
        RunDirLocked: another run holds ``out`` (a ``ValueError`` naming its process).
        ImportError: the ``[train]`` extra is missing.

    Example:
        >>> path = pretrain(out="runs/digits")            # doctest: +SKIP
        >>> pretrain(my_dataset, out="runs/mine", model=my_net, hidden_layer="avgpool",
        ...          image_size=64, steps=1000)           # doctest: +SKIP
    """
    require_extras()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")
    world = World(device)
    created = first_missing(Path(out))
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    lock: Optional[RunLock] = None
    run: Any = None
    try:
        lock = _hold(world, Path(out))
        from .run import Run

        run = Run(world, data, Path(out), model, dict(
            hidden_layer=hidden_layer, weights=weights, image_size=image_size, channels=channels,
            batch_size=batch_size, steps=steps,
            epochs=epochs, lr=lr, optimizer=optimizer, predictor_lr_scale=predictor_lr_scale,
            weight_decay=weight_decay, moving_average_decay=moving_average_decay, projection_size=projection_size,
            projection_hidden_size=projection_hidden_size, workers=workers, cache=cache,
            precision=precision, checkpoint_every=checkpoint_every, log_every=log_every, knn_data=knn_data,
            seed=seed, overwrite=overwrite, strict=strict, progress=progress, threads=threads,
            checkpoint_minutes=checkpoint_minutes, allow_data_change=allow_data_change))
        try:
            encoder: Path = run.train()
            return encoder
        except FileWriteError as error:  # a full disk: one line naming the file, the last checkpoint intact
            raise write_stopped(error, Path(out), run.checkpointed_step) from error
    except BaseException:
        if lock is not None:
            lock.release()
        if created is not None and world.main:
            remove_if_empty(Path(out), created)
        raise
    finally:
        if lock is not None:
            lock.release()
        torch.set_num_threads(threads_before)
        world.close()


def _hold(world: World, out: Path) -> Optional[RunLock]:
    """Rank 0 creates RUN_DIR and takes its lock for the run (see :mod:`byol_wrap.job.lock`); every rank
    raises when that failed (the others with rank 0's message)."""
    lock, error = None, None
    if world.main:
        try:
            check_writable(out)
            lock = RunLock(out).acquire()
        except (ValueError, OSError) as caught:
            error = caught
    if world.distributed:
        message = world.gather(None if error is None else str(error))[0]
        if message is not None and error is None:
            raise RunError(message)
    if error is not None:
        raise error
    return lock

