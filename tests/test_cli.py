"""The byol-wrap command line: every bad input is one line on stderr and exit code 2, never a traceback."""
import builtins
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from byol_wrap.job.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--image-size", "16", "--batch-size", "4", "--projection-size", "32", "--projection-hidden-size", "64",
         "--workers", "0", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def run(capsys, *argv) -> tuple:
    """(exit code, stderr lines)."""
    code = main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def assert_one_line(code: int, err: list, *needles: str) -> None:
    assert code == 2, err
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    for needle in needles:
        assert needle in err[0], err[0]


def test_missing_path(capsys, tmp_path):
    missing = tmp_path / "no_such_folder"
    assert_one_line(*run(capsys, "pretrain", missing, "--out", tmp_path / "run", *SMALL), str(missing), "not exist")


def test_folder_without_images_names_the_extensions(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    code, err = run(capsys, "pretrain", empty, "--out", tmp_path / "run", *SMALL)
    assert_one_line(code, err, str(empty), ".jpg", ".png", ".webp", ".tiff")
    assert not (tmp_path / "run").exists(), "a failed start left an empty RUN_DIR behind"


def test_a_failed_start_removes_the_empty_parents_it_created(capsys, tmp_path):
    code, err = run(capsys, "pretrain", tmp_path / "no_such_folder", "--out", tmp_path / "a" / "b" / "run", *SMALL)
    assert code == 2, err
    assert not (tmp_path / "a").exists(), sorted(str(p) for p in tmp_path.rglob("*"))


def test_a_failed_start_keeps_a_run_dir_that_existed(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    code, err = run(capsys, "pretrain", tmp_path / "no_such_folder", "--out", out, *SMALL)
    assert code == 2, err
    assert (out / "notes.txt").read_text() == "the user's"
    empty_existing = tmp_path / "existing"
    empty_existing.mkdir()
    run(capsys, "pretrain", tmp_path / "no_such_folder", "--out", empty_existing, *SMALL)
    assert empty_existing.is_dir(), "a folder the user made was removed"


def test_unknown_model_suggests_close_names(capsys, images, tmp_path):
    code, err = run(capsys, "pretrain", images, "--out", tmp_path / "run", "--model", "torchvision/resnet19", *SMALL)
    assert_one_line(code, err, "resnet19", "torchvision/resnet18")


def test_unknown_hidden_layer_gives_the_library_message(capsys, images, tmp_path):
    from byol_wrap.core.hooks import resolve_layer
    from byol_wrap.job.models import small_cnn

    with pytest.raises(ValueError) as expected:
        resolve_layer(small_cnn(), "nope")
    code, err = run(capsys, "pretrain", images, "--out", tmp_path / "run", "--hidden-layer", "nope", *SMALL)
    assert_one_line(code, err, " ".join(str(expected.value).split()), "byol-wrap layers byol_wrap/small_cnn")


def test_unwritable_run_dir(capsys, images, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("RUN_DIR cannot be made inside a file")
    code, err = run(capsys, "pretrain", images, "--out", blocker / "run", *SMALL)
    assert_one_line(code, err, "cannot write to RUN_DIR", str(blocker / "run"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_dir(capsys, images, tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        code, err = run(capsys, "pretrain", images, "--out", read_only / "run", *SMALL)
    finally:
        read_only.chmod(0o755)
    assert_one_line(code, err, "cannot write to RUN_DIR")


def test_read_only_file_system(capsys, images, tmp_path, monkeypatch):
    """A RUN_DIR on a read-only mount (simulated: root ignores permission bits): EROFS on the first write."""
    import errno

    real_write_bytes = Path.write_bytes

    def read_only(self, data):
        if tmp_path in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    code, err = run(capsys, "pretrain", images, "--out", tmp_path / "run", *SMALL)
    assert_one_line(code, err, "cannot write to RUN_DIR", "Read-only file system")


def test_batch_larger_than_the_data_set(capsys, images, tmp_path):
    code, err = run(capsys, "pretrain", images, "--out", tmp_path / "run", *SMALL, "--batch-size", "64")
    assert_one_line(code, err, "--batch-size 64", "8 images")


def test_steps_and_epochs_together(capsys, images, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", str(images), "--out", str(tmp_path / "run"), "--steps", "2", "--epochs", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(err) == 1 and "--epochs" in err[0]


def test_finished_run_and_other_arguments_are_refused(capsys, images, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL]) == 0
    capsys.readouterr()
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert_one_line(*run(capsys, "pretrain", images, "--out", out, "--steps", "1", *SMALL),
                    "finished run", "--overwrite")
    assert_one_line(*run(capsys, "pretrain", images, "--out", out, "--steps", "1", "--seed", "3", *SMALL),
                    "seed: 0 in the saved run, 3 now", "--overwrite")
    assert (out / "checkpoints" / "last.pt").read_bytes() == before, "a refused command changes nothing"


def test_strict_stops_at_the_first_unreadable_file(capsys, images, tmp_path):
    root = tmp_path / "with_broken"
    root.mkdir()
    for path in images.iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    code, err = run(capsys, "pretrain", root, "--out", tmp_path / "run", "--steps", "4", "--strict", *SMALL)
    assert_one_line(code, err, str(root / "broken.jpg"))


def test_missing_extra_names_the_pip_command(capsys, images, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ImportError("No module named 'tqdm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    code, err = run(capsys, "pretrain", images, "--out", tmp_path / "run", *SMALL)
    assert_one_line(code, err, 'pip install "byol-wrap[train]"', "tqdm")


def test_layers_prints_the_library_table(capsys):
    from byol_wrap.core.layers import format_layers, list_layers
    from byol_wrap.job.models import small_cnn

    assert main(["layers", "byol_wrap/small_cnn", "--image-size", "16"]) == 0
    expected = format_layers(list_layers(small_cnn(), 16))
    assert capsys.readouterr().out.strip() == expected.strip()


@pytest.mark.integration
def test_module_entry_point_without_traceback_and_lazy_imports(tmp_path):
    """``python -m byol_wrap``: a bad input is one line and exit 2; ``import byol_wrap`` alone loads no job module."""
    script = (
        "import sys, runpy, byol_wrap\n"
        # (not tqdm: kornia itself imports it)
        "loaded = [m for m in sys.modules if m.startswith('byol_wrap.job') or m in ('matplotlib', 'tensorboard')]\n"
        "assert not loaded, loaded\n"
        f"sys.argv = ['byol-wrap', 'pretrain', {str(tmp_path / 'missing')!r}, '--out', {str(tmp_path / 'run')!r}]\n"
        "runpy.run_module('byol_wrap', run_name='__main__')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr and "missing" in lines[0]


def test_files_that_are_not_what_the_flag_wants_are_one_line(capsys, images, tmp_path):
    """An image given as the encoder or as --weights, a run checkpoint given to embed: bad input, exit 2."""
    picture = images / "0.png"
    code, err = run(capsys, "embed", picture, images, "--out", tmp_path / "e.npz")
    assert_one_line(code, err, str(picture), "not a readable byol-wrap file")
    code, err = run(capsys, "pretrain", images, "--out", tmp_path / "run", "--weights", picture, *SMALL)
    assert_one_line(code, err, str(picture))
    checkpoint = tmp_path / "last.pt"
    torch.save({"learner": {}, "optimizer": {}}, checkpoint)
    code, err = run(capsys, "embed", checkpoint, images, "--out", tmp_path / "e.npz")
    assert_one_line(code, err, "byol-wrap export")
