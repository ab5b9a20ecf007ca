"""Decode options for the loader's first epoch, measured on real photos: speed (one core) and difference.

Every option turns a JPEG into uint8 ``(3, S, S)``: resized on the short side to the load size and
centre-cropped (the 128 px view loads at 146, the 224 px view at 256). The reference is Pillow decoding
the whole JPEG (no DCT scaling) and resampling once with an antialiased bilinear filter; each option's
difference from it is reported as mean absolute difference (0-255 units), 99.9th percentile and PSNR.
Rounds are interleaved (option A, B, C, A, B, C, ...) and the median rate is kept.

Options (those whose package is missing are skipped, said in the output):
    read_image        byol-wrap's decoder as shipped (Pillow draft where it shrinks, else simplejpeg + Pillow resize)
    read_image-pillow the same with the simplejpeg path off (Pillow alone: byol-wrap before issue 20)
    pillow-full       Image.open + resize (box = centre crop), bilinear: the reference
    pillow-draft      + Image.draft: libjpeg's DCT scaling to the smallest 1/2, 1/4, 1/8 still >= the load
                      size (byol-wrap's read_image)
    pillow-draft-reduce  + resize(reducing_gap=2.0): Image.reduce by an integer factor first, then bilinear
    simplejpeg        simplejpeg.decode_jpeg(min_height, min_width) (libjpeg-turbo DCT scaling) + Pillow resize
    simplejpeg-tv     simplejpeg (DCT scaling where it shrinks) + torchvision resize (uint8, antialias)
    torchvision       torchvision.io.decode_jpeg (whole image) + torchvision resize (uint8, antialias);
                      deprecated in torchvision 0.29 (TorchCodec replaces it): measured, not used
    torchvision-pil   Pillow draft decode + torchvision resize (uint8, antialias)
    cv2-reduced       cv2.imread(IMREAD_REDUCED_COLOR_k) + cv2.resize INTER_AREA

Usage:
    python -m benchmarks.photo_folder /tmp/photos300
    OMP_NUM_THREADS=1 python -m benchmarks.decode_options /tmp/photos300 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "decode_options"
Decoder = Callable[[str, int], np.ndarray]  # path, load size -> uint8 (S, S, 3)


def _box(w: int, h: int, s: int) -> Tuple[float, float, float, float]:
    scale = max(s / h, s / w)
    bw, bh = min(float(w), s / scale), min(float(h), s / scale)
    left, top = max(0.0, (w - bw) / 2), max(0.0, (h - bh) / 2)
    return (left, top, min(float(w), left + bw), min(float(h), top + bh))


def pillow(draft: bool, reducing_gap: Optional[float] = None) -> Decoder:
    from PIL import Image

    def decode(path: str, s: int) -> np.ndarray:
        with Image.open(path) as image:
            if draft:
                image.draft("RGB", (s, s))
            image = image.convert("RGB")
            w, h = image.size
            image = image.resize((s, s), Image.BILINEAR, box=_box(w, h, s), reducing_gap=reducing_gap)
            return np.asarray(image)
    return decode


def simplejpeg_decoder() -> Decoder:
    import simplejpeg
    from PIL import Image

    def decode(path: str, s: int) -> np.ndarray:
        with open(path, "rb") as handle:
            data = handle.read()
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=s, min_width=s)
        image = Image.fromarray(arr)
        w, h = image.size
        return np.asarray(image.resize((s, s), Image.BILINEAR, box=_box(w, h, s)))
    return decode


def _torch_resize_crop(x: torch.Tensor, s: int) -> np.ndarray:
    from torchvision.transforms.v2 import functional as TF

    h, w = x.shape[-2:]
    scale = max(s / h, s / w)
    nh, nw = max(s, math.ceil(h * scale - 1e-6)), max(s, math.ceil(w * scale - 1e-6))
    x = TF.resize(x, [nh, nw], antialias=True)
    top, left = (nh - s) // 2, (nw - s) // 2
    return x[:, top:top + s, left:left + s].permute(1, 2, 0).numpy()


def simplejpeg_tv_decoder() -> Decoder:
    import simplejpeg

    def decode(path: str, s: int) -> np.ndarray:
        with open(path, "rb") as handle:
            data = handle.read()
        h, w = simplejpeg.decode_jpeg_header(data)[:2]
        scaled = w // 2 >= s and h // 2 >= s
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=s if scaled else 0,
                                     min_width=s if scaled else 0)
        return _torch_resize_crop(torch.from_numpy(arr).permute(2, 0, 1), s)
    return decode


def torchvision_decoder() -> Decoder:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    def decode(path: str, s: int) -> np.ndarray:
        return _torch_resize_crop(decode_jpeg(read_file(path), mode=ImageReadMode.RGB), s)
    return decode


def torchvision_pil_decoder() -> Decoder:
    from PIL import Image

    def decode(path: str, s: int) -> np.ndarray:
        with Image.open(path) as image:
            image.draft("RGB", (s, s))
            arr = np.array(image.convert("RGB"))
        return _torch_resize_crop(torch.from_numpy(arr).permute(2, 0, 1), s)
    return decode


def cv2_decoder() -> Decoder:
    import cv2

    cv2.setNumThreads(1)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}

    def decode(path: str, s: int) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as probe:
            w, h = probe.size
        k = 1
        while k < 8 and min(w, h) // (2 * k) >= s:
            k *= 2
        arr = cv2.imread(path, flags[k])[:, :, ::-1]
        h, w = arr.shape[:2]
        scale = max(s / h, s / w)
        nh, nw = max(s, math.ceil(h * scale - 1e-6)), max(s, math.ceil(w * scale - 1e-6))
        arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_AREA)
        top, left = (nh - s) // 2, (nw - s) // 2
        return np.ascontiguousarray(arr[top:top + s, left:left + s])
    return decode


def read_image_decoder(fast: bool) -> Decoder:
    """byol-wrap's own ``read_image`` (``fast=False``: with its simplejpeg path turned off: Pillow alone)."""
    from byol_wrap.job.data import decode as decode_module

    real = decode_module.decode_jpeg_whole

    def decode(path: str, s: int) -> np.ndarray:
        decode_module.decode_jpeg_whole = real if fast else (lambda *args: None)  # type: ignore[assignment]
        try:
            return decode_module.read_image(path, s).permute(1, 2, 0).numpy()
        finally:
            decode_module.decode_jpeg_whole = real
    return decode


FACTORIES: Dict[str, Callable[[], Decoder]] = {
    "read_image": lambda: read_image_decoder(True),
    "read_image-pillow": lambda: read_image_decoder(False),
    "pillow-full": lambda: pillow(False),
    "pillow-draft": lambda: pillow(True),
    "pillow-draft-reduce": lambda: pillow(True, 2.0),
    "simplejpeg": simplejpeg_decoder,
    "simplejpeg-tv": simplejpeg_tv_decoder,
    "torchvision": torchvision_decoder,
    "torchvision-pil": torchvision_pil_decoder,
    "cv2-reduced": cv2_decoder,
}


def difference(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.float64)
    mse = float((d ** 2).mean())
    return {"mean_abs": float(d.mean()), "p999_abs": float(np.percentile(d, 99.9)), "max_abs": float(d.max()),
            "psnr_db": float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)}


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of JPEG photos (benchmarks/photo_folder.py makes one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[146, 256], help="load sizes (views 128, 224)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=300, help="images per round")
    parser.add_argument("--out", type=Path, default=RESULTS / "decode_options.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    paths = sorted(str(p) for p in args.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:args.limit]
    if not paths:
        raise SystemExit(f"{args.folder} holds no JPEGs")
    decoders: Dict[str, Decoder] = {}
    missing: Dict[str, str] = {}
    for name, factory in FACTORIES.items():
        try:
            decoders[name] = factory()
            decoders[name](paths[0], args.sizes[0])
        except ImportError as error:
            missing[name] = f"not installed ({error})"
            decoders.pop(name, None)
    results: Dict[str, Dict[str, object]] = {}
    for s in args.sizes:
        reference = [FACTORIES["pillow-full"]()(p, s) for p in paths]
        current = [decoders["pillow-draft"](p, s) for p in paths]
        rates: Dict[str, List[float]] = {name: [] for name in decoders}
        for _ in range(args.rounds):
            for name, decode in decoders.items():
                start = time.perf_counter()
                for p in paths:
                    decode(p, s)
                rates[name].append(len(paths) / (time.perf_counter() - start))
        for name, decode in decoders.items():
            outs = [decode(p, s) for p in paths]
            vs_ref = difference(np.stack(outs), np.stack(reference))
            vs_cur = difference(np.stack(outs), np.stack(current))
            results[f"{name}@{s}"] = {"load_size": s, "images_per_s": statistics.median(rates[name]),
                                      "rates": rates[name], "vs_reference": vs_ref, "vs_pillow_draft": vs_cur}
            print(f"{s:4d} {name:20s} {statistics.median(rates[name]):7.1f} img/s   vs full: mean "
                  f"{vs_ref['mean_abs']:.3f} p99.9 {vs_ref['p999_abs']:.0f} PSNR {vs_ref['psnr_db']:.1f} dB   "
                  f"vs draft: mean {vs_cur['mean_abs']:.3f}", flush=True)
    payload = {"command": "python -m benchmarks.decode_options " + " ".join(sys.argv[1:] if argv is None else argv),
               "folder": str(args.folder), "images": len(paths), "missing": missing, "results": results,
               "threads": 1, "omp": os.environ.get("OMP_NUM_THREADS")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


if __name__ == "__main__":
    main()
