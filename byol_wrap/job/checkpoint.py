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
from typing import Any, Callable, Dict, List, Optional

import torch

from ..core.rng import get_rng_state, set_rng_state  # noqa: F401 - the RNG part of last.pt, re-exported for the run
from .fingerprint import compare_fingerprints
from .run_files import RUN_FILES, delete_run_files, foreign_run_files, remove_own_temporary_files  # noqa: F401

FORMAT = "byol-wrap-run"
VERSION = 1
CHECKPOINT = Path("checkpoints") / "last.pt"

# Arguments that change neither the losses nor the weights of a run: a resumed command may differ in them.
HARMLESS_ARGUMENTS = frozenset({"workers", "threads", "cache", "overwrite", "checkpoint_every", "checkpoint_minutes",
                                "knn_data", "strict", "progress", "log_every", "device_count", "allow_data_change",
                                "length"})


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
        previous = (f"the last checkpoint (step {_saved_step(path)}) is intact" if path.exists()
                    else "no checkpoint was written yet")
        raise TrainingStopped(
            f"could not write the checkpoint {path}: {error.strerror or error}; {previous}; "
            f"free some space (or fix the permissions) and run the same command again to resume"
        ) from error
    return path


def write_stopped(error: OSError, run_dir: os.PathLike, step: Optional[int]) -> TrainingStopped:
    """The stop for a file that could not be written (``error`` names it): the last checkpoint, at ``step``
    (``None``: unknown), is intact.

    Example:
        >>> str(write_stopped(OSError(28, "No space left on device"), "/nonexistent/run", None)).split("; ")[1]
        'no checkpoint was written yet'
    """
    path = checkpoint_path(run_dir)
    at = f" (step {step})" if step is not None else ""
    kept = f"the last checkpoint {path}{at} is intact" if path.exists() else "no checkpoint was written yet"
    return TrainingStopped(f"{error}; {kept}; free some space and run the same command again to resume")


def _saved_step(path: Path) -> Any:
    """The step of the checkpoint at ``path``, for a message ("?" when it cannot be read)."""
    try:
        return load_checkpoint(path).get("step", "?")
    except (RunError, OSError):
        return "?"


def _crash_inside_write(path: Path, state: Dict[str, Any]) -> None:  # pragma: no cover - the process dies
    """Test hook: start writing the checkpoint's temporary file, then SIGKILL this process."""
    import io
    import signal

    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    with open(path.parent / f".{path.name}.crash_9_.tmp", "wb") as handle:  # the name atomic_write's would have
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


def resume_state(run_dir: os.PathLike, arguments: Dict[str, Any], overwrite: bool,
                 fingerprint: Optional[Dict[str, Any]] = None, allow_data_change: bool = False,
                 warn: Optional[Callable[[str], None]] = None) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from, or ``None`` for a fresh run.

    - ``overwrite``: the run's own files are deleted (:func:`byol_wrap.job.run_files.delete_run_files`), ``None``;
    - no ``last.pt``: ``None`` (a run killed before its first checkpoint starts again), unless an
      ``encoder.pt``, or run files of something else (:func:`~byol_wrap.job.run_files.foreign_run_files`),
      are there (:class:`RunError`: they would be replaced);
    - data that changed since the run started (``fingerprint``, see :mod:`byol_wrap.job.fingerprint`):
      :class:`RunError` saying what changed, unless ``allow_data_change`` (then ``warn`` says it);
    - a finished run, or one with other arguments: :class:`RunError` saying what differs;
    - else the checkpoint (also a finished run whose ``encoder.pt`` could not be written: the same
      command then writes it).

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
        foreign = foreign_run_files(run_dir)
        if foreign:
            raise RunError(
                f"{run_dir} holds {', '.join(foreign)} but no byol-wrap run (no checkpoint); a new run would replace "
                f"them: add --overwrite to replace them, or choose another --out"
            )
        return None
    state = load_checkpoint(path)
    # a finished run trains no more: what its data became does not matter to it
    change = compare_fingerprints(None if state.get("finished") else state.get("data_fingerprint"), fingerprint)
    if change and not allow_data_change:
        raise RunError(
            f"the data changed since the run in {run_dir} started: {change.describe()}; resumed, it would train on "
            f"other data than the run did and its losses would no longer match an uninterrupted run's: add "
            f"--allow-data-change to continue on the data as it is now, or --overwrite to start afresh"
        )
    saved = state.get("arguments", {})
    differences = compare_arguments(saved, arguments)
    if differences:
        differences = [_with_length(d, saved, arguments) for d in differences]
        if state.get("finished"):
            status = f"a finished run ({state['step']} steps)"
        else:
            given = f" ({saved['length']})" if saved.get("length") else ""
            if change and any(d.startswith("total_steps:") for d in differences):  # --epochs over changed data
                given = f" (--steps {saved.get('total_steps')} keeps its length on the changed data)"
            status = f"an unfinished run: resume it with the arguments it was started with{given}"
        raise RunError(
            f"{run_dir} holds a run started with other arguments ({'; '.join(differences)}), {status}; "
            f"add --overwrite to start afresh, or choose another --out"
        )
    if change and warn is not None:
        warn(f"the data changed since the run started ({change.counts()}); continuing on the data as it is now "
             f"(--allow-data-change): the losses will no longer match an uninterrupted run's")
    encoder = Path(run_dir) / "encoder.pt"
    if state.get("finished") and encoder.exists():
        raise RunError(
            f"{run_dir} holds a finished run ({state['step']} steps; encoder: {encoder}); "
            f"add --overwrite to train it again, or choose another --out"
        )
    return state  # unfinished, or finished without its encoder.pt (a failed write): the run writes it


def _with_length(difference: str, saved: Dict[str, Any], current: Dict[str, Any]) -> str:
    """``total_steps: 100 in the saved run, 75 now`` -> ``... (--steps 100) ... (--epochs 5)``: the flags given."""
    if not difference.startswith("total_steps:") or not saved.get("length") or not current.get("length"):
        return difference
    if (saved["length"], current["length"]) == (f"--steps {saved.get('total_steps')}",
                                                f"--steps {current.get('total_steps')}"):
        return difference  # the flags say no more than the numbers
    return (f"total_steps: {saved.get('total_steps')} in the saved run ({saved['length']}), "
            f"{current.get('total_steps')} now ({current['length']})")


def clean_temporary_files(run_dir: os.PathLike) -> None:
    """Remove the temporary files a killed run's writes left in RUN_DIR (and no file of the user's)."""
    remove_own_temporary_files(run_dir)
