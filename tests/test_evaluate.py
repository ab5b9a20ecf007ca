"""byol_wrap.job.evaluate (``byol-wrap eval``): its kNN and linear-probe numbers against independent computations on
the vectors ``embed`` writes (a hand-written weighted kNN, scikit-learn's LogisticRegression), the untrained
baseline against a fresh build, the splits, the files written, and bad input."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from byol_wrap.job.encoder import embed_images, export_encoder, load_encoder  # noqa: E402
from byol_wrap.job.evaluate import evaluate, format_table, stratified_split  # noqa: E402
from byol_wrap.job.models import small_cnn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16


def _class_images(root: Path, counts: dict, seed: int) -> None:
    """Class folders of small PNG/JPEG images of different sizes: a class colour plus noise, so classes
    are separable but not trivially."""
    rng = np.random.default_rng(seed)
    colours = {"cat": (200, 60, 60), "dog": (60, 200, 60), "eel": (60, 60, 200), "fox": (200, 200, 60)}
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            h, w = int(rng.integers(14, 30)), int(rng.integers(14, 30))
            base = np.array(colours[name], dtype=np.float64)
            pixels = np.clip(base + rng.normal(0, 70, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'jpg' if i % 3 == 0 else 'png'}")


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    net = small_cnn(4)
    with torch.no_grad():  # moved BatchNorm statistics, so the encoder differs from a fresh build
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("encoder")
    return export_encoder(net, folder / "encoder.pt", model_spec="byol_wrap/small_cnn:4", hidden_layer=-1,
                          image_size=SIZE, normalize=([0.5, 0.45, 0.4], [0.25, 0.2, 0.3]), representation_size=32,
                          steps=7)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("labelled")
    _class_images(root / "train", {"cat": 14, "dog": 12, "eel": 13}, seed=1)
    _class_images(root / "test", {"cat": 5, "dog": 4, "eel": 6}, seed=2)
    return root / "train", root / "test"


def _embedded(encoder_path: Path, folder: Path, tmp: Path, classes: list) -> tuple:
    """embed's vectors of a class folder tree and the labels from the parent folder names."""
    out = tmp / f"{folder.name}.npz"
    embed_images(encoder_path, folder, out, batch_size=8, workers=0, progress=False)
    with np.load(out, allow_pickle=False) as data:
        paths, vectors = data["paths"].tolist(), data["embeddings"].astype(np.float64)
    labels = np.array([classes.index(Path(p).parent.name) for p in paths])
    return vectors, labels


def _knn_by_hand(bank, bank_labels, queries, k, temperature=0.1, num_classes=3):
    """Weighted kNN written out: cosine similarity, the k most similar, votes exp(s / T) per class."""
    predictions = []
    for q in queries:
        sims = [float(np.dot(q, b) / (np.linalg.norm(q) * np.linalg.norm(b))) for b in bank]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:min(k, len(sims))]
        votes = [0.0] * num_classes
        for i in order:
            votes[bank_labels[i]] += math.exp(sims[i] / temperature)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return np.array(predictions)


def test_numbers_match_independent_computations_on_embed_vectors(encoder_path, folders, tmp_path):
    from sklearn.linear_model import LogisticRegression

    train_dir, test_dir = folders
    out = tmp_path / "eval" / "report.json"
    report = evaluate(encoder_path, train_dir, test_dir, out=out, workers=0, progress=False, seed=0)
    classes = ["cat", "dog", "eel"]
    assert report["classes"] == classes and report["train_images"] == 39 and report["test_images"] == 15
    x_train, y_train = _embedded(encoder_path, train_dir, tmp_path, classes)
    x_test, y_test = _embedded(encoder_path, test_dir, tmp_path, classes)
    result = report["results"]["encoder"]
    for k in (20, 200):  # 200 > the 39 training images: every image votes
        expected = float((_knn_by_hand(x_train, y_train, x_test, k) == y_test).mean())
        assert result["knn_top1"][str(k)] == pytest.approx(expected, abs=1e-12), (k, result, expected)
    # the probe: the C the report chose, refit on the whole training split standardised by its own statistics
    probe = result["linear_probe"]
    assert probe["validation_top1"][repr(probe["C"])] == max(probe["validation_top1"].values())
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1
    model = LogisticRegression(C=probe["C"], max_iter=1000).fit((x_train - mean) / std, y_train)
    expected = float((model.predict((x_test - mean) / std) == y_test).mean())
    assert probe["top1"] == pytest.approx(expected, abs=1e-12), (probe, expected)
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 15 and confusion.sum(axis=1).tolist() == [5, 4, 6]
    assert np.trace(confusion) / 15 == pytest.approx(probe["top1"])
    # files: the JSON (same numbers) and confusion.png, nothing else
    assert sorted(p.name for p in out.parent.iterdir()) == ["confusion.png", "report.json"]
    assert json.loads(out.read_text())["results"]["encoder"]["knn_top1"] == result["knn_top1"]
    with Image.open(out.parent / "confusion.png") as image:
        assert image.size[0] > image.size[1] > 100
    table = format_table(report)
    assert "encoder" in table and "untrained" in table and "kNN k=200" in table


def test_untrained_baseline_is_a_fresh_build_of_the_spec(encoder_path, folders, tmp_path):
    from byol_wrap.job.baseline import untrained_like

    encoder = load_encoder(encoder_path)
    state_before = torch.random.get_rng_state()
    baseline = untrained_like(encoder, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state_before), "the caller's RNG moved"
    torch.manual_seed(5)
    fresh = small_cnn(4).eval()
    x = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    mean = torch.tensor([0.5, 0.45, 0.4]).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.2, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = fresh((x.float() / 255 - mean) / std)
        torch.testing.assert_close(baseline(x), expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
        assert not torch.allclose(encoder(x), expected)


def test_own_test_split_of_a_npz_and_stratified_split_of_a_folder(encoder_path, folders, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "labelled.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8), y_train=np.arange(40) % 4 + 3,
             x_test=rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8), y_test=np.arange(8) % 2 + 4,
             class_names=np.array(["a", "b", "c", "d", "e", "f", "g"]))
    report = evaluate(encoder_path, path, progress=False, baseline=False)
    assert report["classes"] == ["d", "e", "f", "g"] and report["train_images"] == 40
    assert report["test_images"] == 8 and "own test split" in report["split"]
    assert list(report["results"]) == ["encoder"]
    confusion = np.array(report["results"]["encoder"]["confusion"])
    assert confusion.sum(axis=1).tolist() == [0, 4, 4, 0]  # labels 4 and 5 are classes e and f
    train_dir, _ = folders
    report = evaluate(encoder_path, train_dir, progress=False, workers=0, test_fraction=0.25, seed=1)
    # 25 % of 14, 12, 13 images, rounded: 4 + 3 + 3
    assert report["test_images"] == 10 and report["train_images"] == 29


def test_stratified_split_by_hand():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert sorted(keep.tolist() + held.tolist()) == list(range(16))
    assert [int((labels[held] == c).sum()) for c in range(3)] == [2, 1, 0]  # a class of one stays in training
    again = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(again[1], held)


def test_bad_input(encoder_path, folders, tmp_path):
    train_dir, test_dir = folders
    one = tmp_path / "one"
    _class_images(one, {"cat": 4}, seed=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        evaluate(encoder_path, one, progress=False, workers=0)
    other = tmp_path / "other"
    _class_images(other, {"cat": 2, "fox": 2}, seed=0)
    with pytest.raises(ValueError, match="classes the training data lacks: fox"):
        evaluate(encoder_path, train_dir, other, progress=False, workers=0)
    torch.save({"learner": {}, "optimizer": {}, "step": 3}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="not a byol-wrap encoder file"):
        evaluate(tmp_path / "last.pt", train_dir, progress=False, workers=0)
    with pytest.raises(FileNotFoundError):
        evaluate(encoder_path, tmp_path / "missing", progress=False)
