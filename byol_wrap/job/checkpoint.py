"""A run's ``checkpoints/last.pt``: what it holds, how it is written and read, and when a run resumes.

``last.pt`` is one ``torch.save`` dictionary that ``torch.load(path, weights_only=True)`` reads
(tensors, numbers, strings, lists, tuples and dicts only, no pickled objects):

- ``format`` (``"byol-wrap-run"``) and ``version``,
- ``learner``: the BYOL learner's ``state_dict`` (online net, projector, predictor, target, tau step),
- ``optimizer``, ``scheduler`` and ``scaler`` (float16 runs) state dicts,
- ``step`` (optimizer steps done), ``epoch`` and ``batch_in_epoch`` (position within the epoch),
- ``rng``: one :func:`byol_wrap.core.rng.get_rng_state` dict per process (Python, numpy, torch, CUDA),
- ``arguments``: the run's arguments (:func:`compare_arguments` decides whether a new command may continue it),
- ``finished``, ``skipped`` (``[path, reason]`` pairs so far), ``knn`` (``[step, accuracy]`` pairs)
  and ``elapsed`` (seconds trained).

Example:
    >>> from byol_wrap.job.checkpoint import compare_arguments
    >>> compare_arguments({"lr": 0.001, "steps": 300}, {"lr": 0.002, "steps": 300})
    ['lr: 0.001 in the saved run, 0.002 now']
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..core.rng import get_rng_state, set_rng_state  # noqa: F401 - the RNG part of last.pt, re-exported for the run

FORMAT = "byol-wrap-run"
VERSION = 1
CHECKPOINT = Path("checkpoints") / "last.pt"

# Arguments that change neither the losses nor the weights of a run: a resumed command may differ in them.
HARMLESS_ARGUMENTS = frozenset({"workers", "threads", "overwrite", "checkpoint_every", "knn_data", "strict", "progress",
                                "log_every", "device_count"})

# Files a run writes into RUN_DIR; --overwrite deletes these and nothing else.
RUN_FILES = ("checkpoints/last.pt", "encoder.pt", "metrics.jsonl", "skipped.txt", "plots/training.png",
             "plots/augmentations.png")


class RunError(ValueError):
    """A run cannot start or continue because of its input or RUN_DIR; the message says what to do.

    The command line prints it as one line and exits with code 2.
    """


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (non-finite loss, a full disk, ``--strict``); the last checkpoint is intact.

    The command line prints it as one line and exits with code 1.
    """


# ----------------------------------------------------------------------------- files
def checkpoint_path(run_dir: os.PathLike) -> Path:
    """``RUN_DIR/checkpoints/last.pt``."""
    return Path(run_dir) / CHECKPOINT


def save_checkpoint(state: Dict[str, Any], run_dir: os.PathLike) -> Path:
    """Write ``state`` to ``RUN_DIR/checkpoints/last.pt`` atomically (a temporary file in the same
    folder, flushed and fsynced, then ``os.replace``): a crash or a full disk leaves the previous
    checkpoint as it was.

    Raises:
        TrainingStopped: the file could not be written (full disk, permissions); says the
            previous checkpoint is intact.
    """
    from .io import atomic_save

    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    crash_at = os.environ.get("BYOL_WRAP_TEST_CRASH_IN_CHECKPOINT")  # test hook: kill -9 inside the write
    if crash_at is not None and int(crash_at) == state.get("step"):
        _crash_inside_write(path, state)
    try:
        atomic_save(state, path)
    except OSError as error:
        previous = "the previous checkpoint is unchanged" if path.exists() else "no checkpoint was written yet"
        raise TrainingStopped(
            f"could not write the checkpoint {path} ({error.strerror or error}); {previous}. "
            f"Free space (or fix the permissions) and run the same command again to resume."
        ) from error
    return path


def _crash_inside_write(path: Path, state: Dict[str, Any]) -> None:  # pragma: no cover - the process dies
    """Test hook: start writing the checkpoint's temporary file, then SIGKILL this process."""
    import io
    import signal

    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    with open(path.parent / f".{path.name}.crash.tmp", "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def load_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """Read a ``last.pt`` with ``weights_only=True``.

    Raises:
        RunError: the file is truncated, not a torch file, or not a byol-wrap run
            checkpoint; the message names the file.
    """
    from .io import UnreadableFileError, safe_torch_load

    path = Path(path)
    try:
        state = safe_torch_load(path, "run checkpoint")
    except (UnreadableFileError, FileNotFoundError, IsADirectoryError) as error:  # their messages name the file
        raise RunError(_one_line(error)) from error
    except (RuntimeError, ValueError, OSError, EOFError) as error:
        raise RunError(f"cannot read {path}: {_one_line(error)}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunError(
            f"{path} is not a byol-wrap run checkpoint (no 'format': '{FORMAT}' entry); move it away, "
            f"or use --overwrite to start the run afresh"
        )
    if int(state.get("version", 0)) > VERSION:
        raise RunError(f"{path} was written by a newer byol-wrap (checkpoint version {state['version']}); upgrade")
    return state


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# ----------------------------------------------------------------------------- resume decisions
def compare_arguments(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """What differs between a saved run's arguments and the current command's, one string each.

    Arguments in :data:`HARMLESS_ARGUMENTS` (workers, checkpoint interval, kNN data...) are ignored:
    they change neither losses nor weights.

    Example:
        >>> compare_arguments({"lr": 1.0, "workers": 2}, {"lr": 1.0, "workers": 4})
        []
    """
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key in HARMLESS_ARGUMENTS:
            continue
        before, now = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if before != now:
            differences.append(f"{key}: {before} in the saved run, {now} now")
    return differences


def resume_state(run_dir: os.PathLike, arguments: Dict[str, Any], overwrite: bool) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from, or ``None`` for a fresh run.

    - no ``last.pt``: ``None`` (a run killed before its first checkpoint starts again), unless an
      ``encoder.pt`` is there (:class:`RunError`: it would be replaced);
    - ``overwrite``: the run's own files are deleted (:data:`RUN_FILES`, TensorBoard events), ``None``;
    - a finished run, or one with other arguments: :class:`RunError` saying what differs;
    - else the checkpoint.

    Example:
        >>> resume_state("/nonexistent/run", {}, overwrite=False) is None
        True
    """
    path = checkpoint_path(run_dir)
    if overwrite:
        delete_run_files(run_dir)
        return None
    if not path.exists():
        encoder = Path(run_dir) / "encoder.pt"
        if encoder.exists():
            raise RunError(
                f"{run_dir} holds {encoder.name} but no checkpoint ({path}); a new run would replace that encoder: "
                f"add --overwrite to start afresh, or choose another --out"
            )
        return None
    state = load_checkpoint(path)
    differences = compare_arguments(state.get("arguments", {}), arguments)
    if differences:
        status = (f"a finished run ({state['step']} steps)" if state.get("finished")
                  else "an unfinished run; run its own command to resume it")
        raise RunError(
            f"{run_dir} holds a run started with other arguments ({'; '.join(differences)}), {status}; "
            f"add --overwrite to start afresh, or choose another --out"
        )
    if state.get("finished"):
        encoder = Path(run_dir) / "encoder.pt"
        where = (f"encoder: {encoder}" if encoder.exists()
                 else f"its encoder.pt is missing: byol-wrap export {run_dir} writes it")
        raise RunError(
            f"{run_dir} holds a finished run ({state['step']} steps; {where}); "
            f"add --overwrite to train it again, or choose another --out"
        )
    return state


def delete_run_files(run_dir: os.PathLike) -> List[Path]:
    """Delete the files a run wrote into ``run_dir`` (and nothing else); returns them.

    Example:
        >>> delete_run_files("/nonexistent/run")
        []
    """
    run_dir = Path(run_dir)
    deleted = []
    candidates = [run_dir / name for name in RUN_FILES]
    for folder, pattern in (("checkpoints", ".last.pt*"), ("checkpoints", "last.pt.*tmp*"),
                            ("tensorboard", "events.out.tfevents.*"), (".", ".*.tmp"), ("plots", ".*.tmp")):
        if (run_dir / folder).is_dir():
            candidates += sorted((run_dir / folder).glob(pattern))
    for path in candidates:
        if path.is_file():
            path.unlink()
            deleted.append(path)
    return deleted


def clean_temporary_files(run_dir: os.PathLike) -> None:
    """Remove temporary files a killed run left in ``checkpoints/`` (a write interrupted by kill -9)."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name != "last.pt" and path.name.startswith((".last.pt", "last.pt.")) and path.is_file():
                path.unlink()
