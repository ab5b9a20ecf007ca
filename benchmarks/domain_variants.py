"""Why the native 1-channel run trails grey replicated into RGB (issue 19): controlled variants of one run.

Each variant is the run of ``benchmarks.domain quality`` (``byol_wrap.pretrain`` on ``CONFIG/train``,
small_cnn, 32 px, then kNN of the embeddings) with one thing changed in how the job builds its learner or
network. The changes are made here, for the measurement only, by replacing names the job's set-up module
looks up (``run_setup.BYOL``, ``models.build_model``, ``core.optim.byol_param_groups``); nothing in the
package changes.

- ``base``: the command as it is (default augmentations for the channel count, the job's normalisation);
- ``vr``: the channel-agnostic pipelines with ``value_range=(0, 1)`` (the integer data's full scale) for
  gamma, solarization and the brightness origin, instead of each image's own min and max;
- ``vrclip``: ``vr`` and ``clip=True`` (the jitter clamped to [0, 1], as the photo pipeline clamps);
- ``nogamma``: the channel-agnostic pipelines without the gamma step (``gamma=(1, 1)``);
- ``inet``: 1 channel normalised with ImageNet's grey statistics (mean 0.449, std 0.226) instead of the data's;
- ``chan``: the channel-agnostic pipelines (``rgb=False``) on 3-channel data (grey replicated into RGB),
  in place of the paper's colour pipeline; the normalisation stays ImageNet's;
- ``rep3``: 1-channel data, the network built for 3 channels and given the grey channel three times;
- ``to1``: 3-channel data, the network built for 1 channel and given the mean of the three;
- ``ch3``: the command with ``channels=3`` (``--channels 3``: each grey file replicated into 3 channels,
  a 3-channel network, the default augmentations for 3 channels, the data's statistics);
- ``lr3first``: 1 channel, the first convolution's weight with 3x the learning rate (what Adam gives the
  sum of three identical kernels when grey is replicated into RGB).

Example (from the repository root, after ``python -m benchmarks.domain prepare ...``)::

    python -m benchmarks.domain_variants --root /tmp/domain --variant chan --config rgb8 --seeds 0 1 2 \\
        --steps 300 --out benchmarks/results/domain/variants.jsonl
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from benchmarks.common import machine_description
from benchmarks.domain import OUT_DIR, run_one

VARIANTS = ("base", "vr", "vrclip", "nogamma", "inet", "chan", "rep3", "to1", "ch3", "lr3first")
_PIPELINE_OPTIONS: Dict[str, Dict[str, Any]] = {
    "vr": {"value_range": (0, 1)},
    "vrclip": {"value_range": (0, 1), "clip": True},
    "nogamma": {"gamma": (1.0, 1.0)},
    "chan": {"rgb": False},
}


class _Repeat3(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.expand(-1, 3, -1, -1)


class _Mean1(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1, keepdim=True)


def apply_variant(variant: str) -> None:
    """Replace the job's learner, network or optimizer groups for ``variant`` (this process only)."""
    import byol_wrap.core.optim as optim
    import byol_wrap.job.run_setup as run_setup
    from byol_wrap.core.augment import byol_augmentation

    learner_class = run_setup.BYOL

    def learner(net: nn.Module, image_size: int, **kwargs: Any) -> Any:
        channels = kwargs["input_shape"][0]
        if variant == "inet":
            kwargs["normalize"] = ([0.449], [0.226])
        if variant in _PIPELINE_OPTIONS:
            options = _PIPELINE_OPTIONS[variant]
            kwargs["augment_fn"] = byol_augmentation(image_size, 1, channels=channels, **options)
            kwargs["augment_fn2"] = byol_augmentation(image_size, 2, channels=channels, **options)
        return learner_class(net, image_size, **kwargs)

    run_setup.BYOL = learner  # type: ignore[assignment,misc]
    if variant in ("rep3", "to1"):
        build = run_setup.models_module.build_model
        inner, adapter = (3, _Repeat3) if variant == "rep3" else (1, _Mean1)

        def build_model(model: Any, weights: Any = None, image_size: Any = None, channels: int = 3,
                        notes: Any = None) -> nn.Module:
            return nn.Sequential(adapter(), *build(model, weights, image_size, channels=inner, notes=notes))

        run_setup.models_module.build_model = build_model  # also used by load_encoder to rebuild
    if variant == "ch3":
        import byol_wrap

        pretrain = byol_wrap.pretrain

        def pretrain_3(*args: Any, **kwargs: Any) -> Any:
            return pretrain(*args, channels=3, **kwargs)

        byol_wrap.pretrain = pretrain_3  # type: ignore[assignment]
    if variant == "lr3first":
        groups = optim.byol_param_groups

        def param_groups(learner: Any, lr: float, *args: Any, **kwargs: Any) -> List[Dict[str, Any]]:
            out = groups(learner, lr, *args, **kwargs)
            first = learner.net[0].weight
            for group in out:
                group["params"] = [p for p in group["params"] if p is not first]
            return [*out, {"params": [first], "lr": lr * 3, "weight_decay": 0.0}]

        optim.byol_param_groups = param_groups  # type: ignore[assignment]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--config", required=True, help="grey16, rgb8, bands4, ... (benchmarks.domain prepare)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--out", default=str(OUT_DIR / "variants.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    apply_variant(args.variant)
    work = Path(tempfile.mkdtemp(prefix="byol-domain-variant-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        row = run_one(Path(args.root), args.config, seed, args.steps, args.batch_size, args.hidden, False, work)
        row.update(variant=args.variant, machine=machine_description())
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
