"""The default augmentations for other channel counts against the RGB ones, per pixel and channel.

Times T and T' (``byol_augmentation(side, view, channels=C)``) for C = 1, 3 (the paper's RGB
pipeline, the baseline), 4 and 13 on the same batch size and side, and the jitter stage alone
(:class:`~byol_wrap.core.augment_channels.IntensityJitter`, order per image and per batch, against
byol-wrap's RGB ``ColorJitter``). Calls are interleaved (one of each in turn, repeated) and
summarised by their medians; the ratios divide by the RGB figure scaled to the same number of
channels (milliseconds per channel).

Example (from the repository root)::

    python -m benchmarks.channel_augment --threads 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from benchmarks.color_jitter import interleaved
from benchmarks.common import RESULTS_DIR, machine_description, write_json
from byol_wrap.core.augment import ColorJitter, byol_augmentation
from byol_wrap.core.augment_channels import IntensityJitter

#: (image side, batch) pairs.
CASES = ((32, 64), (96, 16))
CHANNELS = (1, 3, 4, 13)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "channel_augment" / "channel_augment.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload: Dict[str, Any] = {"command": "python -m benchmarks.channel_augment " + " ".join(
        sys.argv[1:] if argv is None else argv), "machine": machine_description(), "cases": {}}
    for side, batch in CASES:
        images = {c: torch.rand(batch, c, side + 8, side + 8, generator=torch.Generator().manual_seed(c)) * 1000
                  for c in CHANNELS}
        images[3] = images[3] / 1000  # the RGB pipeline takes [0, 1]
        functions: Dict[str, Callable[[], Any]] = {}
        for c in CHANNELS:
            for view in (1, 2):
                pipeline = byol_augmentation(side, view=view, channels=c)
                functions[f"{'T' if view == 1 else 'Tp'} C={c}"] = lambda p=pipeline, x=images[c]: p(x)
        crops = {c: torch.rand(batch, c, side, side, generator=torch.Generator().manual_seed(10 + c)) for c in CHANNELS}
        rgb_jitter = ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8, per_image_order=False)
        functions["jitter RGB ColorJitter (batch order)"] = lambda j=rgb_jitter, x=crops[3]: j(x)
        for c in (1, 13):
            for per_image in (True, False):
                jitter = IntensityJitter(p=0.8, per_image_order=per_image)
                name = f"jitter IntensityJitter C={c} ({'image' if per_image else 'batch'} order)"
                functions[name] = lambda j=jitter, x=crops[c] * 1000: j(x)
        result = interleaved(functions, args.repeats)
        ratios, per_channel = {}, {}
        for name, ms in result.items():
            c = int(name.split("C=")[1].split()[0]) if "C=" in name else 3
            base = result[f"{name.split()[0]} C=3"] if name.startswith("T") else result[
                "jitter RGB ColorJitter (batch order)"]
            ratios[name] = ms / base
            per_channel[name] = (ms / c) / (base / 3)
        payload["cases"][f"{side}px x {batch}"] = {"ms": result, "ratio_to_rgb": ratios,
                                                   "per_channel_ratio_to_rgb": per_channel}
        for name, ms in result.items():
            print(f"{side} px, batch {batch}: {name:>48}: {ms:8.2f} ms  vs RGB {ratios[name]:.2f}x, per channel "
                  f"{per_channel[name]:.2f}x", flush=True)
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
