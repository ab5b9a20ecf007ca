"""Soak test: many training steps of a small model, watching memory and hooks.

Runs ``--steps`` full BYOL steps (default augmentations, both views through online and
target, backward, Adam, EMA update, finite checks on) of the benchmarks' small CNN on
synthetic uint8 images, sampling the process's resident set size (RSS, from
``/proc/self/statm``) every ``--sample-every`` steps and counting the hooks left on any
module (forward, forward-pre, backward, backward-pre, state-dict and the global ones).
Reported: the RSS drift after warm-up (the first ``--warmup`` fraction of the steps),
``(max - min) / min`` of the samples after it, the trend (mean of the later half of those
samples over the earlier half, minus 1: a leak makes it grow with the steps), and the hooks
left at the end; the same for the RSS after glibc's ``malloc_trim(0)`` (freed heap pages
handed back), which removes the allocator's caching from the figure.
Target (issue 11): drift within 2 %, 0 hooks.

Usage:
    python -m benchmarks.soak                                   # 1000 steps
    python -m benchmarks.soak --out benchmarks/results/soak/soak.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from benchmarks.common import SmallCNN
from byol_wrap import BYOL
from byol_wrap.core.optim import byol_param_groups
from byol_wrap.job.io import atomic_write_text


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; ru_maxrss elsewhere, a peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trimmed_rss_mb() -> Optional[float]:
    """RSS after glibc's ``malloc_trim(0)`` hands freed heap pages back to the system: what the
    process still holds, without the allocator's caching (None where there is no glibc)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None
    return rss_mb()


def drift_and_trend(values: List[float]) -> Tuple[float, float]:
    """``(max - min) / min`` and mean(later half) / mean(earlier half) - 1."""
    if not values:
        return float("nan"), float("nan")
    half = len(values) // 2
    drift = (max(values) - min(values)) / min(values)
    trend = (sum(values[half:]) / len(values[half:])) / (sum(values[:half]) / half) - 1 if half else float("nan")
    return round(drift, 5), round(trend, 5)


def hook_count(module: nn.Module) -> int:
    """Hooks on ``module`` and its children, plus torch's global module hooks."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
    count = sum(len(getattr(m, name, {}) or {}) for m in module.modules() for name in names)
    from torch.nn.modules import module as module_mod

    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        count += len(getattr(module_mod, name, {}) or {})
    return count


def soak(steps: int, sample_every: int, batch_size: int, image_size: int, width: int, warmup: float,
         seed: int = 0) -> Dict[str, Any]:
    torch.manual_seed(seed)
    net = SmallCNN(width)
    hooks_before = hook_count(net)
    learner = BYOL(net, image_size=image_size, hidden_layer="flatten", projection_hidden_size=512,
                   projection_size=128, total_steps=steps)
    opt = torch.optim.Adam(byol_param_groups(learner, lr=3e-4))
    data = torch.randint(0, 256, (16, batch_size, 3, image_size, image_size), dtype=torch.uint8)
    def sample(step: int) -> Dict[str, Any]:
        raw = rss_mb()  # before the trim: what the process holds, allocator caches included
        trimmed = trimmed_rss_mb()
        return {"step": step, "rss_mb": round(raw, 2), "rss_trimmed_mb": None if trimmed is None else round(trimmed, 2),
                "hooks": hook_count(learner)}

    samples: List[Dict[str, Any]] = [sample(0)]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = learner(data[step % len(data)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        learner.update_moving_average()
        if step % sample_every == 0 or step == steps:
            samples.append({**sample(step), "loss": round(loss.item(), 5),
                            "seconds": round(time.perf_counter() - start, 2)})
    window = [s for s in samples if s["step"] >= warmup * steps and s["step"] > 0]
    after = [s["rss_mb"] for s in window]
    # a leak shows as a trend: mean of the later half of the samples against the earlier half
    drift, trend = drift_and_trend(after)
    trimmed = [s["rss_trimmed_mb"] for s in window if s["rss_trimmed_mb"] is not None]
    trimmed_drift, trimmed_trend = drift_and_trend(trimmed) if len(trimmed) == len(window) else (None, None)
    return {
        "steps": steps, "sample_every": sample_every, "batch_size": batch_size, "image_size": image_size,
        "width": width, "warmup_fraction": warmup,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch.get_num_threads()={torch.get_num_threads()}, torch {torch.__version__}",
        "hooks_on_net_before": hooks_before, "hooks_left": hook_count(learner),
        "rss_first_after_warmup_mb": after[0] if after else None, "rss_last_mb": samples[-1]["rss_mb"],
        "rss_drift_after_warmup": drift, "rss_trend_after_warmup": trend,
        "rss_trimmed_drift_after_warmup": trimmed_drift, "rss_trimmed_trend_after_warmup": trimmed_trend,
        "seconds_per_step": round(samples[-1]["seconds"] / steps, 4),
        "samples": samples,
    }


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of the steps before the drift window")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON result (printed either way)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.sample_every < 1:
        parser.error("--steps and --sample-every must be positive")
    torch.set_num_threads(args.threads)
    result = soak(args.steps, args.sample_every, args.batch_size, args.image_size, args.width, args.warmup)
    text = json.dumps(result, indent=2) + "\n"
    if args.out is not None:
        atomic_write_text(args.out, text)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
