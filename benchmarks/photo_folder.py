"""A folder of ~300 ImageNet-sized JPEGs made from the real photographs that ship inside installed packages.

Nothing can be downloaded here, so the loader benchmarks use the photographs bundled with matplotlib
(``mpl-data/sample_data/grace_hopper.jpg``) and scikit-image (``skimage/data``: astronaut, coffee, chelsea,
rocket, motorcycle, retina, hubble, ...). Each output is a random crop (10-100 % of the area, aspect 3:4
to 4:3), maybe mirrored, resized to an ImageNet-like size (about 500 x 375, landscape or portrait, short
side 280-500) and saved as a JPEG at quality 85-95 (seeded: the same folder every time). One image in
20 comes from a grey photograph and stays grey (ImageNet has a few grey JPEGs too); the rest are colour.

Usage:
    python -m benchmarks.photo_folder /tmp/photos --count 300     # needs: pip install scikit-image
"""
from __future__ import annotations

import argparse
import os
import random
from pathlib import Path
from typing import List, Tuple

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "camera.png", "coins.png", "grass.png",
                  "gravel.png", "brick.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                  "motorcycle_right.png", "retina.jpg", "rocket.jpg", "page.png", "clock_motion.png")
SIZES: Tuple[Tuple[int, int], ...] = ((500, 375), (500, 333), (500, 400), (375, 500), (333, 500), (500, 500),
                                      (480, 360), (640, 480), (400, 300), (500, 281))


def source_photos() -> List[Path]:
    """The bundled photographs found in this Python environment."""
    found: List[Path] = []
    try:
        import matplotlib

        hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            found.append(hopper)
    except ImportError:
        pass
    try:
        import skimage

        folder = Path(os.path.dirname(skimage.__file__)) / "data"
        found += [folder / name for name in SKIMAGE_PHOTOS if (folder / name).is_file()]
    except ImportError:
        pass
    return found


def make_folder(out: Path, count: int = 300, seed: int = 0) -> List[Path]:
    """Write ``count`` JPEGs into ``out`` (created); returns their paths."""
    from PIL import Image, ImageOps

    sources = source_photos()
    if not sources:
        raise SystemExit("no bundled photographs found: pip install scikit-image (and matplotlib)")
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for path in sources:
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in ("L", "I", "I;16") else "RGB")
            images.append((path.stem, image.copy()))
    colour = [item for item in images if item[1].mode == "RGB"]
    grey = [item for item in images if item[1].mode == "L"] or colour
    written = []
    for i in range(count):
        name, image = grey[(i // 20) % len(grey)] if i % 20 == 19 else colour[i % len(colour)]
        w, h = image.size
        area = w * h * rng.uniform(0.1, 1.0)
        aspect = rng.uniform(3 / 4, 4 / 3)
        cw, ch = min(w, int(round((area * aspect) ** 0.5))), min(h, int(round((area / aspect) ** 0.5)))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        tw, th = rng.choice(SIZES)
        crop = crop.resize((tw, th), Image.BICUBIC)
        target = out / f"{i:04d}_{name}.jpg"
        crop.save(target, quality=rng.randint(85, 95))
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = make_folder(args.out, args.count, args.seed)
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} JPEGs from {len(source_photos())} bundled photographs in {args.out} "
          f"({total / 2**20:.1f} MiB, mean {total / len(paths) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
