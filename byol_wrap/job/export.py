"""``byol-wrap export``: a run's encoder, from its last checkpoint, finished or not.

Example:
    >>> export_run("runs/digits")                     # doctest: +SKIP
    PosixPath('runs/digits/encoder.pt')
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .checkpoint import RunError, checkpoint_path, load_checkpoint


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
