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

from .recipe import require_extras
from .run_dir import first_missing, remove_if_empty
from .world import World


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
    threads: Optional[int] = None,
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
            the usable CPUs, at most 4, for folders).
        threads: CPU threads for the training step (``torch.set_num_threads`` for the run, restored after;
            default: torch's own choice). On a CPU shared with other work, 1 can be several times faster.
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
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")
    world = World(device)
    created = first_missing(Path(out))
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        from .run import Run

        run = Run(world, data, Path(out), model, dict(
            hidden_layer=hidden_layer, weights=weights, image_size=image_size, batch_size=batch_size, steps=steps,
            epochs=epochs, lr=lr, optimizer=optimizer, predictor_lr_scale=predictor_lr_scale,
            weight_decay=weight_decay, moving_average_decay=moving_average_decay, projection_size=projection_size,
            projection_hidden_size=projection_hidden_size, workers=workers,
            precision=precision, checkpoint_every=checkpoint_every, log_every=log_every, knn_data=knn_data,
            seed=seed, overwrite=overwrite, strict=strict, progress=progress, threads=threads))
        return run.train()
    except BaseException:
        if created is not None and world.main:
            remove_if_empty(Path(out), created)
        raise
    finally:
        torch.set_num_threads(threads_before)
        world.close()

