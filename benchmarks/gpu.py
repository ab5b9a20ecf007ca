"""Training throughput and peak memory on a GPU: byol-wrap against byol-pytorch, in one command.

Setup (the issue's): ResNet-50 (torchvision, random weights) at 224 px, batch 256, bf16
autocast, channels_last, Adam, with and without ``torch.compile``. A step is what a training
loop does per batch: both augmented views, online and target passes, the loss, backward, an
optimizer step and the EMA update. The backbone's ``fc`` is replaced by ``nn.Identity`` and
read at its output (``hidden_layer=-1``) for every contestant, so no library needs a hook and
``torch.compile`` sees whole graphs; the representation is the same pooled 2048-d vector.

Rows (each with and without ``torch.compile`` of the learner):

    byol-wrap            defaults (both views as one batch, per-view BatchNorm statistics),
                         the paper's augmentations on the GPU
    byol-wrap-per-view   ``view_batching="per_view"`` (one forward per view)
    byol-wrap-noaug      defaults, augmentation off (identity)
    byol-pytorch         lucidrains' byol-pytorch, its own augmentations, its defaults
    byol-pytorch-noaug   byol-pytorch, augmentation off

plus, for byol-wrap's default augmentations, their share of a step (T and T' timed alone,
interleaved with full steps), and a step whose batches come from JPEG files through the job
layer's loader (``byol_wrap.job.data``: decoding in DataLoader workers, uint8 to the GPU), and the
same step with the batches read back from the image cache (``cached-loader``: one untimed epoch
fills it first); both report the share of the step spent waiting for data.

Every row builds its learner fresh, runs ``--warmup`` steps (compilation happens there),
then ``--steps`` timed steps with the device synchronised before and after each; images/s
is ``batch / median step time``; peak memory is ``torch.cuda.max_memory_allocated`` over the
timed steps (model, optimizer state and activations). A row that fails (e.g. a library that
does not compile) records its error and the script goes on.

Run on a GPU machine, from the repository root::

    python -m benchmarks.gpu                      # everything, results in benchmarks/results/gpu/
    python -m benchmarks.gpu --rows byol-wrap byol-pytorch --no-compile   # a subset

Smoke test on a CPU (tiny model, aot_eager compilation; the tests run this)::

    python -m benchmarks.gpu --tiny --device cpu --out /tmp/gpu_tiny.json
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from byol_wrap import BYOL

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
LIBRARY_ROWS = ("byol-wrap", "byol-wrap-per-view", "byol-wrap-noaug", "byol-pytorch", "byol-pytorch-noaug")
EXTRA_ROWS = ("augment-share", "jpeg-loader", "cached-loader")
ROWS = LIBRARY_ROWS + EXTRA_ROWS


# ---------------------------------------------------------------------------- models
class TinyNet(nn.Module):
    """conv-BN-ReLU x2 and a pooled feature: the ``--tiny`` stand-in for ResNet-50."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def make_backbone(arch: str) -> nn.Module:
    """The backbone with ``fc = Identity`` (read at its output, ``hidden_layer=-1``)."""
    if arch == "tiny":
        net: nn.Module = TinyNet()
    else:
        import torchvision

        net = getattr(torchvision.models, arch)()
    net.fc = nn.Identity()  # type: ignore[assignment]
    return net


def make_learner(row: str, args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The learner of ``row`` on ``device`` (channels_last when asked)."""
    torch.manual_seed(0)
    net = make_backbone(args.arch).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    heads = dict(projection_size=args.projection_size, projection_hidden_size=args.projection_hidden_size)
    identity = lambda x: x  # noqa: E731
    augment = not row.endswith("-noaug")
    if row.startswith("byol-pytorch"):
        from byol_pytorch import BYOL as LucidBYOL

        options: Dict[str, Any] = {} if augment else dict(augment_fn=identity, augment_fn2=identity)
        learner: nn.Module = LucidBYOL(net, image_size=args.image_size, hidden_layer=-1, **heads, **options)
    else:
        view_batching = "per_view" if row == "byol-wrap-per-view" else "auto"
        options = {} if augment else dict(augment_fn=identity, normalize=None)
        learner = BYOL(net, image_size=args.image_size, hidden_layer=-1, view_batching=view_batching,
                       **heads, **options)
    learner = learner.to(device)
    if args.channels_last:
        learner = learner.to(memory_format=torch.channels_last)
    return learner.train()


# ---------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(args: argparse.Namespace, device: torch.device) -> contextlib.AbstractContextManager:
    if not args.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_step(learner: nn.Module, args: argparse.Namespace, device: torch.device,
              compiled: bool) -> Callable[[Tensor], None]:
    """One training step (forward under autocast, backward, Adam, EMA) of ``learner``."""
    model = torch.compile(learner, backend=args.compile_backend) if compiled else learner
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=1e-4)

    def step(images: Tensor) -> None:
        with autocast(args, device):
            loss = model(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learner.update_moving_average()

    return step


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def summary(times: List[float], batch_size: int) -> Dict[str, Any]:
    step = statistics.median(times)
    return {"median_step_s": step, "min_step_s": min(times), "max_step_s": max(times), "steps": len(times),
            "images_per_s": batch_size / step}


def synthetic_batch(args: argparse.Namespace, device: torch.device) -> Tensor:
    """Random images in [0, 1] on ``device`` (content does not change the time)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.source_size, args.source_size, generator=g).to(device)
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


def run_library_row(row: str, compiled: bool, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    learner = make_learner(row, args, device)
    step = make_step(learner, args, device, compiled)
    x = synthetic_batch(args, device)
    started = time.perf_counter()
    for _ in range(args.warmup):
        step(x)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    reset_peak(device)
    times = [timed(functools.partial(step, x), device) for _ in range(args.steps)]
    result = summary(times, args.batch_size)
    result.update(peak_memory_mib=peak_mib(device), warmup_s=warmup_s)
    del learner, step
    return result


def run_augment_share(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """byol-wrap's default T and T' alone vs a full step with them, interleaved (eager)."""
    learner = make_learner("byol-wrap", args, device)
    step = make_step(learner, args, device, compiled=False)
    x = synthetic_batch(args, device)

    def augment_only() -> None:
        learner.augment1(x)  # type: ignore[operator]
        learner.augment2(x)  # type: ignore[operator]

    for _ in range(args.warmup):
        step(x)
        augment_only()
    steps, augments = [], []
    for _ in range(args.steps):
        steps.append(timed(lambda: step(x), device))
        augments.append(timed(augment_only, device))
    shares = sorted(a / s for a, s in zip(augments, steps))
    return {"median_step_s": statistics.median(steps), "median_augment_s": statistics.median(augments),
            "augment_share": statistics.median(shares), "augment_share_min": shares[0],
            "augment_share_max": shares[-1], "steps": len(steps)}


def write_jpegs(folder: Path, count: int, size: int) -> None:
    """``count`` smooth random RGB JPEGs of ``size`` x ``size`` (upsampled noise: natural-image-like sizes)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        low = torch.rand(1, 3, 8, 8, generator=g)
        image = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
        image = image + 0.05 * torch.randn(image.shape, generator=g)
        array = (image[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"{i:05d}.jpg", quality=90)


def run_jpeg_loader(args: argparse.Namespace, device: torch.device, cached: bool = False) -> Dict[str, Any]:
    """byol-wrap's default step with batches decoded from JPEG files by byol_wrap.job.data's loader, or, with
    ``cached``, read back from the image cache (filled first by one untimed epoch that decodes and writes it)."""
    try:
        from byol_wrap.job import data  # the job layer (pip install "byol-wrap[train]")
    except ImportError as error:
        return {"skipped": f"byol_wrap.job.data is not available here ({error}); the JPEG row needs the job layer"}
    needed = args.batch_size * (args.warmup + args.steps)
    with contextlib.ExitStack() as stack:
        folder = Path(args.jpeg_dir) if args.jpeg_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if not args.jpeg_dir:
            write_jpegs(folder, needed, args.jpeg_size)
        dataset = data.open_images(str(folder), data.default_load_size(args.image_size))
        if len(dataset) < needed:
            return {"skipped": f"{folder} has {len(dataset)} images, the row needs {needed}"}
        workers = args.workers if args.workers is not None else data.default_workers()
        fill_s = None
        if cached:
            from byol_wrap.job.data.cache import CachedImages, attach_cache

            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            dataset = attach_cache(dataset, "auto", run_dir, say=lambda line: None)
            if not isinstance(dataset, CachedImages):
                return {"skipped": "the image cache was not used (not enough free disk space?)"}
            stack.callback(dataset.close)
            started = time.perf_counter()
            filler = data.make_loader(dataset, args.batch_size, workers=workers, seed=0, epoch=0, drop_last=False,
                                      continuous=False)
            for _ in filler:
                pass
            filler.close()
            fill_s = time.perf_counter() - started
        loader = data.make_loader(dataset, args.batch_size, workers=workers, seed=0, epoch=1 if cached else 0,
                                  pin_memory=device.type == "cuda")
        learner = make_learner("byol-wrap", args, device)
        step = make_step(learner, args, device, compiled=False)
        batches = iter(loader)
        waits, steps = [], []
        for i in range(args.warmup + args.steps):
            synchronize(device)
            start = time.perf_counter()
            images = next(batches).images.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loaded = time.perf_counter()
            step(images)
            synchronize(device)
            if i >= args.warmup:
                waits.append(loaded - start)
                steps.append(time.perf_counter() - start)
        loader.close()
        result = summary(steps, args.batch_size)
        result.update(median_data_wait_s=statistics.median(waits), data_wait_share=sum(waits) / sum(steps),
                      workers=workers, images=len(dataset), cache_fill_s=fill_s,
                      jpeg_folder=str(args.jpeg_dir) if args.jpeg_dir else f"generated ({args.jpeg_size} px)")
        return result


# ---------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="resnet50", help="a torchvision model name, or 'tiny'")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=None, help="side of the input images (default: image size)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--projection-size", type=int, default=256)
    parser.add_argument("--projection-hidden-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens there)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--no-compile", action="store_true", help="only the eager rows")
    parser.add_argument("--compile-only", action="store_true", help="only the compiled rows")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 instead of bf16 autocast")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--jpeg-dir", help="a folder with at least batch x (warmup + steps) images for the JPEG "
                                           "row (default: generate them in a temporary folder)")
    parser.add_argument("--jpeg-size", type=int, default=320, help="side of the generated JPEGs")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: byol_wrap.job.data's)")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke test: tiny net, 16 px, batch 4, 1 + 1 steps, aot_eager compilation")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.arch, args.image_size, args.batch_size = "tiny", 16, 4
        args.projection_size, args.projection_hidden_size, args.steps, args.warmup = 8, 16, 1, 1
        args.jpeg_size = 20
        args.workers = 0 if args.workers is None else args.workers
        if args.compile_backend == "inductor":
            args.compile_backend = "aot_eager"
    args.source_size = args.source_size or args.image_size
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def markdown(payload: Dict[str, Any]) -> str:
    """The results as a Markdown table (written next to the JSON)."""
    lines = [f"# GPU benchmark: {payload['device_name']}", "", f"Command: `{payload['command']}`", "",
             f"Setup: {payload['setup']}", "",
             "| row | compile | images/s | median step (s) | peak memory (MiB) |", "| --- | --- | --- | --- | --- |"]
    for key, result in payload["results"].items():
        if key in EXTRA_ROWS:
            continue
        row, _, mode = key.partition(":")
        if "error" in result:
            lines.append(f"| {row} | {mode} | failed: {result['error'][:120]} | | |")
            continue
        memory = result.get("peak_memory_mib")
        lines.append(f"| {row} | {mode} | {result['images_per_s']:.1f} | {result['median_step_s']:.4f} | "
                     f"{'-' if memory is None else f'{memory:.0f}'} |")
    share = payload["results"].get("augment-share")
    if share and "augment_share" in share:
        lines += ["", f"Default augmentations (T and T', eager): {100 * share['augment_share']:.1f} % of a step "
                      f"(median of paired ratios, range {100 * share['augment_share_min']:.1f}-"
                      f"{100 * share['augment_share_max']:.1f} %; {share['median_augment_s'] * 1e3:.1f} ms of "
                      f"{share['median_step_s'] * 1e3:.1f} ms)."]
    elif share:
        lines += ["", f"Augmentation share: {share.get('error') or share.get('skipped')}"]
    for key, what in (("jpeg-loader", "decoded from JPEG files"), ("cached-loader", "read from the image cache")):
        jpeg = payload["results"].get(key)
        if jpeg and "images_per_s" in jpeg:
            lines += ["", f"Step with batches {what} (byol_wrap.job.data, {jpeg['workers']} workers, "
                          f"{jpeg['jpeg_folder']}): {jpeg['images_per_s']:.1f} images/s, median step "
                          f"{jpeg['median_step_s']:.4f} s of which {jpeg['median_data_wait_s']:.4f} s waiting for "
                          f"data ({100 * jpeg['data_wait_share']:.0f} % of the time)."]
        elif jpeg:
            lines += ["", f"{key} row: {jpeg.get('error') or jpeg.get('skipped')}"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or --tiny --device cpu for the smoke test")
    compile_modes = [False, True]
    if args.no_compile:
        compile_modes = [False]
    if args.compile_only:
        compile_modes = [True]
    payload: Dict[str, Any] = {
        "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
        "device_name": device_name(device), "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "setup": (f"{args.arch}, {args.image_size} px (from {args.source_size} px inputs), batch {args.batch_size}, "
                  f"{'bf16 autocast' if args.bf16 else 'float32'}, "
                  f"{'channels_last' if args.channels_last else 'contiguous'}, heads {args.projection_hidden_size}->"
                  f"{args.projection_size}, Adam, median of {args.steps} steps after {args.warmup} warm-up steps, "
                  f"compile backend {args.compile_backend}"),
        "results": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def record(key: str, fn: Callable[[], Dict[str, Any]]) -> None:
        try:
            result = fn()
        except Exception as error:  # a failing row is a result too; the others still run
            result = {"error": f"{type(error).__name__}: {error}"}
        payload["results"][key] = result
        print(key, json.dumps(result), flush=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        reset_peak(device)

    for compiled in compile_modes:
        for row in args.rows:
            if row in LIBRARY_ROWS:
                record(f"{row}:{'compiled' if compiled else 'eager'}",
                       lambda: run_library_row(row, compiled, args, device))  # noqa: B023
    if "augment-share" in args.rows:
        record("augment-share", lambda: run_augment_share(args, device))
    if "jpeg-loader" in args.rows:
        record("jpeg-loader", lambda: run_jpeg_loader(args, device))
    if "cached-loader" in args.rows:
        record("cached-loader", lambda: run_jpeg_loader(args, device, cached=True))
    args.out.with_suffix(".md").write_text(markdown(payload))
    print(markdown(payload))
    return payload


if __name__ == "__main__":
    main()
