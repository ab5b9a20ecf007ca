"""The colour jitter alone: byol-wrap's ``ColorJitter`` (order per batch, and per image) against Kornia's.

Also the hue step alone: :func:`byol_wrap.core.augment.shift_hue` against ``kornia.enhance.adjust_hue``.
Calls are interleaved (one of each in turn, repeated) and summarised by their medians.

Example (from the repository root)::

    python -m benchmarks.color_jitter --threads 2
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import kornia.augmentation as K
import torch
from kornia.enhance import adjust_hue

from benchmarks.common import RESULTS_DIR, machine_description, median, write_json
from byol_wrap.core.augment import ColorJitter, shift_hue

#: (image side, batch) pairs: the speed benchmark's 32 px batch 64 and 224 px batch 16.
CASES = ((32, 64), (224, 16))


def interleaved(functions: Dict[str, Callable[[], Any]], repeats: int) -> Dict[str, float]:
    """Median milliseconds of each function, called in turn ``repeats`` times (after 5 warm-up rounds)."""
    times: Dict[str, List[float]] = {name: [] for name in functions}
    for round_ in range(repeats + 5):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            if round_ >= 5:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * median(values) for name, values in times.items()}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "color_jitter" / "color_jitter.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload: Dict[str, Any] = {"command": "python -m benchmarks.color_jitter " + " ".join(
        sys.argv[1:] if argv is None else argv), "machine": machine_description(), "cases": {}}
    for side, batch in CASES:
        x = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
        angles = (torch.rand(batch, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.2 * 2 * math.pi
        jitters = {
            "byol-wrap, order per batch (default)": ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8, per_image_order=False),
            "byol-wrap, order per image": ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8, per_image_order=True),
            "kornia ColorJitter": K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
        }
        functions: Dict[str, Callable[[], Any]] = {
            name: (lambda j=jitter, images=x: j(images)) for name, jitter in jitters.items()}
        functions["hue step: shift_hue"] = lambda images=x, a=angles: shift_hue(images, a)
        functions["hue step: kornia adjust_hue"] = lambda images=x, a=angles: adjust_hue(images, a)
        result = interleaved(functions, args.repeats if side < 100 else max(10, args.repeats // 4))
        payload["cases"][f"{side}px x {batch}"] = result
        for name, ms in result.items():
            print(f"{side} px, batch {batch}: {name:>38}: {ms:7.2f} ms", flush=True)
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
