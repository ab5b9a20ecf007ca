"""The README's main job with channels-last views (today's default) against NCHW views, interleaved.

Runs ``byol_wrap.pretrain(None, out=...)`` (the built-in digits, 300 steps) ``--repeats`` times per mode,
alternating the modes. NCHW views are obtained by making ``byol_wrap.core.byol.wants_channels_last`` answer
False (what ``BYOL(memory_format="preserve")`` does; the job has no flag for it). Reports the training
seconds and images/s the job prints, and the kNN accuracy after.

Example (from the repository root)::

    python -m benchmarks.job_memory_format --repeats 2
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.common import RESULTS_DIR, machine_description, median, write_json


def run_job(mode: str, out: Path) -> Dict[str, Any]:
    """One pretraining run of the README's job in ``mode`` (``"channels_last"`` or ``"nchw"``)."""
    import byol_wrap.core.byol as byol_module
    from byol_wrap.job.train import pretrain

    original = byol_module.wants_channels_last
    if mode == "nchw":
        byol_module.wants_channels_last = lambda *args, **kwargs: False  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        pretrain(None, out=out, progress=False)
        seconds = time.perf_counter() - start
    finally:
        byol_module.wants_channels_last = original  # type: ignore[assignment]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    knn = [row["knn"] for row in rows if "knn" in row]
    speeds = [row["images_per_s"] for row in rows if "images_per_s" in row]
    return {"wall_seconds": seconds, "median_images_per_s": median(speeds), "knn_before": knn[0],
            "knn_after": knn[-1]}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "job_memory_format" / "job_memory_format.json")
    args = parser.parse_args(argv)
    results: Dict[str, List[Dict[str, Any]]] = {"nchw": [], "channels_last": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in results:
                result = run_job(mode, Path(tmp) / f"{mode}_{repeat}")
                results[mode].append(result)
                print(f"{mode}: {json.dumps(result)}", flush=True)
    payload = {"command": "python -m benchmarks.job_memory_format " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine_description(), "runs": results,
               "ratio_wall_channels_last_vs_nchw": median([r["wall_seconds"] for r in results["channels_last"]])
               / median([r["wall_seconds"] for r in results["nchw"]]),
               "ratio_images_per_s_channels_last_vs_nchw":
                   median([r["median_images_per_s"] for r in results["channels_last"]])
                   / median([r["median_images_per_s"] for r in results["nchw"]])}
    write_json(args.out, payload)
    print(f"wall-time ratio channels-last / NCHW: {payload['ratio_wall_channels_last_vs_nchw']:.3f}; images/s "
          f"ratio: {payload['ratio_images_per_s_channels_last_vs_nchw']:.3f}")
    return payload


if __name__ == "__main__":
    main()
