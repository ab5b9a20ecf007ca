"""``byol-wrap export``: a run's encoder, from its last checkpoint, finished or not.

Example:
    >>> export_run("runs/digits")                     # doctest: +SKIP
    PosixPath('runs/digits/encoder.pt')
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from torch import nn

from .checkpoint import RunError, checkpoint_path, load_checkpoint


def export_run(run_dir: Union[str, os.PathLike], out: Optional[Union[str, os.PathLike]] = None,
               model: Union[nn.Module, str, None] = None, overwrite: bool = False,
               how: str = "pass model=<a new instance of it>: export_run(run_dir, model=net)") -> Path:
    """Write the encoder of a run's ``checkpoints/last.pt`` (finished or not) to ``out``; returns its path.

    ``out``: a file; a folder (``out/encoder.pt`` is written into it); or ``None``: ``RUN_DIR/encoder.pt``,
    the run's own file, written under the run's lock (refused while a run trains there: export elsewhere
    with ``out``). An existing ``out`` file is replaced only with ``overwrite``; the run's checkpoint never.
    The network is rebuilt from the spec the checkpoint records only for the built-in families
    (:mod:`byol_wrap.job.rebuild`); for another, pass ``model`` (a module, or a spec you trust).

    Raises:
        RunError: no checkpoint, an unreadable one, an ``out`` that exists or is the checkpoint, or a run of
            an ``nn.Module`` given in Python without ``model`` (or call
            :func:`byol_wrap.job.encoder.export_encoder` yourself).
        UntrustedSpecError: the recorded spec is not built-in and no ``model`` was given.
        RunDirLocked: a run holds RUN_DIR (``out`` left out).

    Example:
        >>> export_run("runs/digits")                     # doctest: +SKIP
        PosixPath('runs/digits/encoder.pt')
    """
    from .encoder import export_encoder
    from .lock import RunLock
    from .rebuild import rebuild_recorded

    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir)
    lock = RunLock(run_dir).acquire() if out is None and run_dir.is_dir() else None
    try:
        if not path.exists():
            what = "does not exist" if not run_dir.exists() else f"holds no checkpoint ({path} is missing)"
            raise RunError(f"RUN_DIR {run_dir} {what}; give the --out folder of a byol-wrap pretrain run")
        target = _target(run_dir, path, out, overwrite)
        state = load_checkpoint(path)
        meta = dict(state["encoder"])
        if not meta.get("model_spec") and model is None:
            raise RunError(f"{path} is a run of a model given in Python ({state['arguments'].get('model')}); "
                           f"{how}, or export it with byol_wrap.job.encoder.export_encoder(net, path, ...)")
        channels = int((meta.get("extra") or {}).get("channels") or 3)
        net = rebuild_recorded(meta.get("model_spec"), f"the checkpoint {path}", meta.get("image_size"), model, how,
                               channels=channels)
        prefix = "net."
        weights = {key[len(prefix):]: value for key, value in state["learner"].items() if key.startswith(prefix)}
        try:
            net.load_state_dict(weights)
        except RuntimeError as error:
            raise RunError(f"{path}: the saved weights do not fit {meta.get('model_spec') or type(net).__name__} "
                           f"({str(error).splitlines()[0]})") from error
        if model is not None:
            meta["model_spec"] = model if isinstance(model, str) else None
        return export_encoder(net, target, steps=int(state["step"]), **meta)
    finally:
        if lock is not None:
            lock.release()


def _target(run_dir: Path, checkpoint: Path, out: Optional[Union[str, os.PathLike]], overwrite: bool) -> Path:
    """Where the encoder goes, refusing the checkpoint and (without ``overwrite``) an existing file."""
    if out is None:
        return run_dir / "encoder.pt"
    target = Path(out)
    if target.is_dir():
        target = target / "encoder.pt"
    if target.exists() and os.path.samefile(target, checkpoint):
        raise RunError(f"--out {out} is the run's checkpoint; export to another file (the default is "
                       f"{run_dir / 'encoder.pt'})")
    if target.exists() and not overwrite:
        raise RunError(f"{target} already exists; add --overwrite to replace it, or give another --out")
    return target
