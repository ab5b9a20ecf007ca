"""``byol-wrap eval``: is the encoder better than starting from scratch, on the user's labelled images?

On frozen features of the encoder's centre view (the preprocessing of ``embed``), for the encoder
and, in the same run, for the same architecture untrained (:func:`byol_wrap.job.baseline.untrained_like`):

- weighted kNN top-1 at k = 20 and k = 200 (temperature 0.1, cosine similarity; the training split
  is the bank, the test split the queries; Wu et al. 2018, as in the BYOL literature),
- a linear probe: multinomial logistic regression (scikit-learn, L-BFGS) on features standardised
  with the training split's mean and standard deviation; the inverse regularisation ``C`` is chosen
  on a stratified validation part of the training split (``val_fraction``), the probe is then refit
  on the whole training split with that ``C`` and scored once on the test split.

The test split is ``test=`` when given (its classes must be among the training classes), the
``x_test``/``y_test`` arrays of a ``.npz``, the digits' own split, or else a stratified
``test_fraction`` of the labelled folder, drawn by ``seed``. ``out`` gets the report as JSON
(atomically) and ``confusion.png`` (the linear probes' confusion matrices on the test split) beside it.

Example:
    >>> report = evaluate("runs/digits/encoder.pt", "digits", out="runs/digits/eval/report.json")  # doctest: +SKIP
    >>> print(format_table(report))                                                              # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .data.arrays import stratified_split
from .data.channels import PixelFormat, meta_pixel_format

PathLike = Union[str, "os.PathLike[str]"]
KS: Tuple[int, ...] = (20, 200)
TEMPERATURE = 0.1
C_GRID: Tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)

__all__ = ["evaluate", "format_table", "LabelledImages", "read_labelled", "stratified_split", "knn_top1",
           "linear_probe", "KS", "C_GRID"]


# ----------------------------------------------------------------------------- labelled data
@dataclass
class LabelledImages:
    """Images ``(N, C, H, W)`` in their evaluation view and the encoder's pixel format (uint8 RGB, or
    its channels and sample type), labels ``0..K-1`` and the class names."""

    images: Tensor
    labels: Tensor
    classes: List[str]
    source: str
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _decode_folder(files: List[str], size: Any, workers: Optional[int], bar: Any,
                   fmt: Optional[PixelFormat] = None) -> Tuple[Tensor, Tensor, List]:
    from .data import ImageFiles, default_load_size, default_workers, eval_images, make_loader

    dataset = ImageFiles(files, default_load_size(size), fmt=fmt)
    loader = make_loader(dataset, min(64, len(files)), workers=default_workers() if workers is None else workers,
                         drop_last=False, shuffle=False, continuous=False)
    images, kept, skipped = [], [], []
    try:
        for batch in loader:
            if len(batch.images):
                images.append(eval_images(batch.images, size))
                kept.append(batch.indices)
            skipped += batch.skipped
            bar.update(len(batch.images) + len(batch.skipped))
    finally:
        loader.close()
    if not images:
        raise ValueError(f"no readable image among {len(files)} files")
    return torch.cat(images), torch.cat(kept), skipped


def _class_folders(path: Path) -> Tuple[List[str], List[str], List[int]]:
    from .data import find_image_paths

    classes: List[str] = []
    files: List[str] = []
    labels: List[int] = []
    for name in sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = find_image_paths(path / name)
        if found:
            labels += [len(classes)] * len(found)
            classes.append(name)
            files += found
    loose = [p for p in path.iterdir() if p.is_file() and find_image_paths(p)]
    if loose:
        warnings.warn(f"{len(loose)} image(s) directly in {path} (not in a class subfolder) left out, e.g. "
                      f"{loose[0].name}", stacklevel=3)
    return classes, files, labels


def _decode_labelled(files: List[str], folder_labels: List[int], classes: List[str], path: Path, size: Any,
                     workers: Optional[int], progress: bool, what: str, fmt: Any, role: str) -> LabelledImages:
    """Class-folder files decoded at the encoder's view, unreadable ones left out with one warning."""
    bar = _bar(len(files), progress, what)
    try:
        x, kept, skipped = _decode_folder(files, size, workers, bar, fmt)
    finally:
        bar.close()
    if skipped:
        warnings.warn(f"{role}: {len(skipped)} unreadable file(s) left out, e.g. {skipped[0][0]}: {skipped[0][1]}",
                      stacklevel=3)
    y = torch.tensor(folder_labels, dtype=torch.int64)[kept]
    return LabelledImages(x, y, classes, str(path), skipped)


def _npz_labelled(path: Path, size: Any, prefix: str) -> Tuple[Tensor, Tensor, Optional[List[str]]]:
    import numpy as np

    from .data import eval_images, load_npz_images

    images = eval_images(load_npz_images(path, f"x_{prefix}"), size)
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = torch.from_numpy(np.asarray(npz[f"y_{prefix}"]).astype(np.int64)).flatten()
            names = [str(n) for n in npz["class_names"].tolist()] if "class_names" in npz.files else None
    except KeyError as error:
        raise ValueError(f"{path} has x_{prefix} but no y_{prefix} labels") from error
    if len(labels) != len(images):
        raise ValueError(f"{path}: x_{prefix} has {len(images)} images but y_{prefix} {len(labels)} labels")
    return images, labels, names


def _relabel(labels: Tensor, names: Optional[List[str]]) -> Tuple[Tensor, List[str]]:
    """Label values -> 0..C-1 in sorted order of value; class names from ``names[value]`` when they fit."""
    values = sorted(set(labels.tolist()))
    if names is not None and all(0 <= v < len(names) for v in values):
        classes = [names[v] for v in values]
    else:
        classes = [str(v) for v in values]
    lookup = {v: i for i, v in enumerate(values)}
    return torch.tensor([lookup[v] for v in labels.tolist()], dtype=torch.int64), classes


def read_labelled(data: PathLike, image_size: Any, *, workers: Optional[int] = None, progress: bool = False,
                  role: str = "labelled data",
                  fmt: Optional[PixelFormat] = None) -> Tuple[LabelledImages, Optional[LabelledImages]]:
    """Labelled images at ``image_size`` (embed's centre view): ``(training split, its own test split or None)``.

    ``data``: a folder with one subfolder of images per class (sorted names are the classes; images
    searched recursively), a ``.npz`` with ``x_train``/``y_train`` (uint8 NHWC; ``x_test``/``y_test``
    and ``class_names`` used when present), or ``"digits"``. ``fmt``: the encoder's pixel format (files are
    decoded to it as ``embed`` decodes them; ``None``: 8-bit RGB); ``.npz`` and digits are 8-bit RGB only.

    Raises:
        FileNotFoundError: a missing path.
        ValueError: fewer than two classes, no readable image, a ``.npz`` without labels, 8-bit RGB arrays
            (``.npz``, digits) for another ``fmt``.
    """
    from .data import load_digits
    from .data.arrays import _is_digits

    size = image_size if isinstance(image_size, int) else tuple(image_size)
    _check_in_memory(data, fmt, role)
    if isinstance(data, str) and _is_digits(data):
        x, y, xq, yq = load_digits(size)
        classes = [str(i) for i in range(10)]
        return (LabelledImages(x, y, classes, "digits (training split)"),
                LabelledImages(xq, yq, classes, "digits (test split)"))
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{role} {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{role} {path} must be a folder with one subfolder of images per class, a .npz with "
                             f"x_train and y_train, or 'digits'")
        x, y, names = _npz_labelled(path, size, "train")
        labels, classes = _relabel(y, names)
        train = LabelledImages(x, labels, classes, f"{path}:x_train")
        test = None
        import numpy as np

        with np.load(path, allow_pickle=False) as npz:
            has_test = "x_test" in npz.files and "y_test" in npz.files
        if has_test:
            xq, yq, _ = _npz_labelled(path, size, "test")
            test = LabelledImages(xq, yq, [str(v) for v in sorted(set(yq.tolist()))], f"{path}:x_test")
            test = _align(test, train, raw_values=_values(y), names=names, role=f"{path}:x_test")
        return _check_classes(train, role, path), test
    classes, files, folder_labels = _class_folders(path)
    if len(classes) < 2:
        raise ValueError(f"{role} {path} needs one subfolder of images per class, at least 2 classes; found "
                         f"{len(classes)} class folder(s) with images")
    images = _decode_labelled(files, folder_labels, classes, path, size, workers, progress, "decode", fmt, role)
    return _check_classes(images, role, path), None


def _check_in_memory(data: PathLike, fmt: Optional[PixelFormat], role: str) -> None:
    """8-bit RGB arrays (``.npz``, digits) cannot feed an encoder of another pixel format."""
    from .data.arrays import _is_digits

    if fmt is None or fmt.is_photo:
        return
    if (isinstance(data, str) and _is_digits(data)) or Path(data).is_file():
        raise ValueError(f"{role} {data} holds 8-bit RGB images but the encoder takes {fmt.channels} channel(s) "
                         f"of {fmt.dtype}; give a folder of such images, one subfolder per class")


def _values(labels: Tensor) -> List[int]:
    return sorted(set(labels.tolist()))


def _check_classes(data: LabelledImages, role: str, path: Path) -> LabelledImages:
    present = len(set(data.labels.tolist()))
    if present < 2:
        raise ValueError(f"{role} {path} has {present} class with images; eval needs at least 2 classes")
    return data


def _align(test: LabelledImages, train: LabelledImages, raw_values: Optional[List[int]] = None,
           names: Optional[List[str]] = None, role: str = "test data") -> LabelledImages:
    """Map the test split's labels onto the training classes (by name); unknown classes are an error."""
    if raw_values is not None:  # the same .npz: labels are the same values
        lookup = {v: i for i, v in enumerate(raw_values)}
        unknown = sorted(set(test.labels.tolist()) - set(lookup))
        if unknown:
            shown = [names[v] if names and 0 <= v < len(names) else str(v) for v in unknown]
            raise ValueError(f"{role} has classes the training split lacks: {', '.join(shown[:8])}")
        labels = torch.tensor([lookup[v] for v in test.labels.tolist()], dtype=torch.int64)
        return LabelledImages(test.images, labels, train.classes, test.source, test.skipped)
    index = {name: i for i, name in enumerate(train.classes)}
    unknown = [name for name in test.classes if name not in index]
    if unknown:
        raise ValueError(f"{role} has classes the training data lacks: {', '.join(unknown[:8])}"
                         f"{f' and {len(unknown) - 8} more' if len(unknown) > 8 else ''} (training classes: "
                         f"{', '.join(train.classes[:8])}{' ...' if len(train.classes) > 8 else ''})")
    mapping = torch.tensor([index[name] for name in test.classes], dtype=torch.int64)
    return LabelledImages(test.images, mapping[test.labels], train.classes, test.source, test.skipped)


def _read_test(data: PathLike, train: LabelledImages, image_size: Any, workers: Optional[int],
               progress: bool, fmt: Optional[PixelFormat] = None) -> LabelledImages:
    """A separate test set (``--test``): a class folder tree, a .npz (its x_test if present, else x_train)
    or 'digits' (its test split)."""
    from .data.arrays import _is_digits

    size = image_size if isinstance(image_size, int) else tuple(image_size)
    role = "test data"
    _check_in_memory(data, fmt, role)
    if isinstance(data, str) and _is_digits(data):
        return _align(read_labelled(data, size)[1], train, role=role)  # type: ignore[arg-type]
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{role} {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{role} {path} must be a folder with one subfolder per class or a .npz")
        import numpy as np

        with np.load(path, allow_pickle=False) as npz:
            prefix = "test" if "x_test" in npz.files and "y_test" in npz.files else "train"
        x, y, names = _npz_labelled(path, size, prefix)
        labels, classes = _relabel(y, names)
        return _align(LabelledImages(x, labels, classes, f"{path}:x_{prefix}"), train, role=f"{role} {path}")
    classes, files, folder_labels = _class_folders(path)
    if not classes:
        raise ValueError(f"{role} {path} has no class subfolder with images")
    images = _decode_labelled(files, folder_labels, classes, path, size, workers, progress, "decode test", fmt, role)
    return _align(images, train, role=f"{role} {path}")


# ----------------------------------------------------------------------------- measures
def _bar(total: int, enabled: bool, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the [train] extra
        enabled = False
    if not enabled:
        class _Quiet:
            def update(self, n: int = 1) -> None:
                pass

            def close(self) -> None:
                pass

        return _Quiet()
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False)


@torch.inference_mode()
def features(encoder: nn.Module, images: Tensor, batch_size: int = 256, device: Any = "cpu",
             bar: Any = None) -> Tensor:
    """``encoder`` applied to ``images`` (its pixel format: uint8, uint16, float) in batches, float32 on the CPU."""
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        chunks.append(encoder(x).float().cpu())
        if bar is not None:
            bar.update(x.shape[0])
    return torch.cat(chunks)


def knn_top1(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, k: int,
             num_classes: int, temperature: float = TEMPERATURE) -> float:
    """Weighted kNN top-1 (0-1): cosine similarities, votes ``exp(s / temperature)``, ``k`` clipped to the bank."""
    from ..core.knn import knn_predict

    predicted = knn_predict(test, train, train_labels, num_classes, k=min(k, train.shape[0]),
                            temperature=temperature)
    return float((predicted == test_labels).double().mean())


def _standardise(train: Any, *others: Any) -> List[Any]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    return [(a - mean) / std for a in (train, *others)]


def _logistic(C: float, seed: int) -> Any:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as error:
        raise ImportError('the linear probe needs scikit-learn: pip install "byol-wrap[train]"') from error
    return LogisticRegression(C=C, max_iter=1000, random_state=seed)


def linear_probe(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, *,
                 val_fraction: float = 0.2, seed: int = 0, grid: Sequence[float] = C_GRID) -> Dict[str, Any]:
    """Logistic regression on standardised features, ``C`` chosen on a validation part of ``train``.

    The grid is walked from strong to weak regularisation, each fit starting from the previous
    solution; the final probe is fitted afresh on the whole of ``train`` with the chosen ``C``.

    Returns:
        ``{"top1", "C", "validation_top1": {C: acc}, "predictions": [...]}`` (``top1`` on ``test``).
    """

    with _one_blas_thread():
        return _linear_probe(train, train_labels, test, test_labels, val_fraction, seed, grid)


def _one_blas_thread() -> Any:
    """scikit-learn's solver on one BLAS thread: for probe-sized problems more threads only spin-wait (on the
    project's loaded 2-core machine the digits probe took 61 s with OpenBLAS's 2 threads, 1.7 s with one)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # comes with scikit-learn; without it BLAS keeps its own setting
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(limits=1)


def _linear_probe(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, val_fraction: float,
                  seed: int, grid: Sequence[float]) -> Dict[str, Any]:
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning

    x, y = train.double().numpy(), train_labels.numpy()
    fit_idx, val_idx = stratified_split(train_labels, val_fraction, seed)
    if len(val_idx) == 0 or len(set(y[fit_idx.numpy()].tolist())) < 2:
        raise ValueError("too few labelled images to hold out a validation part for the linear probe")
    x_fit, x_val = _standardise(x[fit_idx.numpy()], x[val_idx.numpy()])
    scores: Dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        path = _logistic(min(grid), seed)
        path.set_params(warm_start=True)  # each C starts from the last solution: ~1.6x faster on CIFAR features
        for C in sorted(grid):
            path.set_params(C=C).fit(x_fit, y[fit_idx.numpy()])
            scores[repr(float(C))] = float((path.predict(x_val) == y[val_idx.numpy()]).mean())
        best = max(grid, key=lambda C: (scores[repr(float(C))], -C))  # ties: the stronger regularisation
        x_all, x_test = _standardise(x, test.double().numpy())
        model = _logistic(best, seed).fit(x_all, y)
    predicted = model.predict(x_test)
    return {"top1": float((predicted == test_labels.numpy()).mean()), "C": float(best),
            "validation_top1": scores, "predictions": np.asarray(predicted).tolist()}


def _confusion(labels: Tensor, predicted: Sequence[int], num_classes: int) -> List[List[int]]:
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for true, guess in zip(labels.tolist(), predicted):
        matrix[true, guess] += 1
    return matrix.tolist()


# ----------------------------------------------------------------------------- the evaluation
def _load(encoder: Any, model: Union[nn.Module, str, None], device: Any,
          how: Optional[str] = None) -> Tuple[Any, Union[nn.Module, str, None], str]:
    """The encoder, and what builds its untrained baseline (a copy of ``model`` taken before the weights go in)."""
    import copy

    from .encoder import Encoder, load_encoder

    if isinstance(encoder, Encoder):
        return encoder.to(device).eval(), model, "<Encoder>"
    fresh = copy.deepcopy(model) if isinstance(model, nn.Module) else model  # load_encoder fills model= in place
    return load_encoder(encoder, device, model=model, how=how), fresh, str(encoder)


def evaluate(
    encoder: Any,
    labelled: PathLike,
    test: Optional[PathLike] = None,
    *,
    out: Optional[PathLike] = None,
    ks: Sequence[int] = KS,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
    baseline: bool = True,
    batch_size: int = 256,
    workers: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    model: Union[nn.Module, str, None] = None,
    how: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """kNN and linear-probe accuracy of an encoder's frozen features, next to the untrained architecture.

    Args:
        encoder: an ``encoder.pt`` / ``.safetensors`` path, or an :class:`~byol_wrap.job.encoder.Encoder`.
        labelled: class folders, a labelled ``.npz`` or ``"digits"`` (see :func:`read_labelled`).
        test: a separate labelled test set (class names must be among ``labelled``'s); default: the
            ``.npz``'s or digits' own test split, else a stratified ``test_fraction`` of ``labelled``.
        out: the JSON report to write (``confusion.png`` goes beside it); ``None``: write nothing.
        ks: the kNN neighbour counts (20 and 200).
        val_fraction: the part of the training split that chooses the probe's regularisation.
        seed: the splits, the probe's solver and the baseline's initialisation.
        baseline: also measure the same architecture untrained (:func:`byol_wrap.job.baseline.untrained_like`).
        model: for an encoder of a network outside the built-in families: a new instance of it, or its spec
            (that code runs: you named it); it also builds the untrained baseline.
        how: what to do instead, for the message when ``model`` is needed (the command line's ``--model``).
        progress: show progress bars.

    Returns:
        The report (the JSON's content): ``results[name]["knn_top1"][str(k)]``,
        ``results[name]["linear_probe"]["top1"]`` for ``name`` in ``"encoder"``, ``"untrained"``,
        with sizes, classes, splits, timings and confusion matrices.

    Example:
        >>> report = evaluate("runs/digits/encoder.pt", "digits")                  # doctest: +SKIP
        >>> report["results"]["encoder"]["linear_probe"]["top1"]                  # doctest: +SKIP
        0.93
    """
    from .baseline import untrained_like

    started = time.perf_counter()
    device = torch.device(device)
    trained, fresh_model, encoder_name = _load(encoder, model, device, how)
    image_size = trained.meta.get("image_size")
    if image_size is None:
        raise ValueError("the encoder records no image_size; export it again with byol-wrap export")
    fmt = meta_pixel_format(trained.meta)  # files decoded as embed decodes them for this encoder
    train, own_test = read_labelled(labelled, image_size, workers=workers, progress=progress, fmt=fmt)
    if test is not None:
        test_set = _read_test(test, train, image_size, workers, progress, fmt)
        split = f"test set {test_set.source}"
    elif own_test is not None:
        test_set, split = own_test, f"the data's own test split ({own_test.source})"
    else:
        keep, held = stratified_split(train.labels, test_fraction, seed)
        test_set = LabelledImages(train.images[held], train.labels[held], train.classes, f"{train.source} "
                                  f"(stratified {test_fraction:.0%}, seed {seed})")
        train = LabelledImages(train.images[keep], train.labels[keep], train.classes, train.source)
        split = f"stratified {test_fraction:.0%} of {train.source} held out (seed {seed})"
    if len(test_set) == 0:
        raise ValueError("the test split is empty; give --test or more images per class")
    num_classes = len(train.classes)
    loaded = time.perf_counter()
    nets: Dict[str, Any] = {"encoder": trained}
    if baseline:
        nets["untrained"] = untrained_like(trained, seed=seed, model=fresh_model)
    results: Dict[str, Any] = {}
    seconds: Dict[str, float] = {"load": loaded - started, "features": 0.0, "knn": 0.0, "linear_probe": 0.0}
    bar = _bar((len(train) + len(test_set)) * len(nets), progress, "features")
    try:
        embedded = {}
        for name, net in nets.items():
            t0 = time.perf_counter()
            embedded[name] = (features(net, train.images, batch_size, device, bar),
                              features(net, test_set.images, batch_size, device, bar))
            seconds["features"] += time.perf_counter() - t0
    finally:
        bar.close()
    for name, (f_train, f_test) in embedded.items():
        t0 = time.perf_counter()
        knn = {str(k): knn_top1(f_train, train.labels, f_test, test_set.labels, k, num_classes) for k in ks}
        t1 = time.perf_counter()
        probe = linear_probe(f_train, train.labels, f_test, test_set.labels, val_fraction=val_fraction, seed=seed)
        t2 = time.perf_counter()
        seconds["knn"] += t1 - t0
        seconds["linear_probe"] += t2 - t1
        predictions = probe.pop("predictions")
        results[name] = {"knn_top1": knn, "linear_probe": probe, "feature_size": int(f_train.shape[1]),
                         "confusion": _confusion(test_set.labels, predictions, num_classes)}
    seconds["total"] = time.perf_counter() - started
    from .. import __version__

    report: Dict[str, Any] = {
        "encoder": encoder_name, "model_spec": trained.meta.get("model_spec"), "image_size": image_size,
        "steps": trained.meta.get("steps"), "labelled": str(labelled), "test": None if test is None else str(test),
        "split": split, "classes": train.classes, "train_images": len(train), "test_images": len(test_set),
        "validation_fraction": val_fraction, "seed": seed, "ks": list(ks), "temperature": TEMPERATURE,
        "c_grid": list(C_GRID), "pixel_format": None if fmt is None else fmt.as_dict(),
        "skipped": len(train.skipped) + len(test_set.skipped), "results": results,
        "seconds": seconds, "device": str(device), "byol_wrap_version": __version__,
    }
    if out is not None:
        write_report(report, out)
    return report


def write_report(report: Dict[str, Any], out: PathLike) -> Path:
    """Write ``report`` as JSON (atomically) and ``confusion.png`` in the same folder; returns the JSON path."""
    from .io import atomic_write_text

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    plot_confusion(report, path.parent / "confusion.png")
    return path


def plot_confusion(report: Dict[str, Any], path: PathLike) -> Path:
    """The linear probes' confusion matrices (rows: true class, normalised), encoder beside untrained."""
    from .monitor import _figure, _save_figure

    names = list(report["results"])
    classes = report["classes"]
    side = min(0.35 * len(classes) + 2.5, 9.0)
    figure = _figure(side * len(names), side)
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for axis, name in zip(axes, names):
        matrix = torch.tensor(report["results"][name]["confusion"], dtype=torch.float64)
        rows = matrix.sum(dim=1, keepdim=True).clamp(min=1)
        axis.imshow((matrix / rows).numpy(), vmin=0, vmax=1, cmap="Blues")
        top1 = report["results"][name]["linear_probe"]["top1"]
        axis.set_title(f"{name}: linear probe {top1:.1%}", fontsize=10)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        if len(classes) <= 20:
            axis.set_xticks(range(len(classes)))
            axis.set_xticklabels(classes, rotation=90, fontsize=7)
            axis.set_yticks(range(len(classes)))
            axis.set_yticklabels(classes, fontsize=7)
    figure.tight_layout()
    _save_figure(figure, Path(path))
    return Path(path)


def format_table(report: Dict[str, Any]) -> str:
    """The report as a small text table (accuracies in %).

    Example:
        >>> print(format_table({"ks": [20], "results": {"encoder": {"knn_top1": {"20": 0.5},
        ...       "linear_probe": {"top1": 0.75, "C": 1.0}}}, "train_images": 8, "test_images": 2,
        ...       "seconds": {"total": 1.0}}))
                     kNN k=20  linear probe (C)
        encoder         50.0%      75.0% (1)
        8 training / 2 test images; 1 s
    """
    ks = [str(k) for k in report["ks"]]
    header = f"{'':<10}" + "".join(f"{'kNN k=' + k:>11}" for k in ks) + f"{'linear probe (C)':>18}"
    lines = [header]
    for name, result in report["results"].items():
        row = f"{name:<10}" + "".join(f"{result['knn_top1'][k]:>11.1%}" for k in ks)
        probe = result["linear_probe"]
        row += f"{probe['top1']:>11.1%} ({probe['C']:g})"
        lines.append(row)
    lines.append(f"{report['train_images']} training / {report['test_images']} test images; "
                 f"{report['seconds']['total']:.0f} s")
    return "\n".join(lines)
