"""``byol-wrap eval | neighbours | export --format`` on the command line: results printed, files written, and every
bad input one line on stderr with exit code 2."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from byol_wrap.job.cli import main  # noqa: E402
from byol_wrap.job.encoder import export_encoder  # noqa: E402
from byol_wrap.job.models import small_cnn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for name in ("ant", "bee"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    torch.manual_seed(0)
    (root / "run").mkdir()
    encoder = export_encoder(small_cnn(4), root / "run" / "encoder.pt", model_spec="byol_wrap/small_cnn:4",
                             hidden_layer=-1, image_size=12, normalize=None, representation_size=32, steps=0)
    return {"root": root, "encoder": encoder}


def run(capsys, *argv) -> tuple:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def assert_one_line(code: int, err: list, *needles: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    for needle in needles:
        assert needle in err[0], err[0]


def test_eval_prints_the_table_and_writes_the_report(capsys, setup):
    root = setup["root"]
    code, out, err = run(capsys, "eval", setup["encoder"], root / "train", "--test", root / "test", "--workers", "0",
                         "--no-progress")
    assert code == 0, err
    assert "kNN k=20" in out and "untrained" in out and "12 training / 4 test images" in out
    report = json.loads((root / "run" / "eval" / "report.json").read_text())
    assert report["classes"] == ["ant", "bee"] and (root / "run" / "eval" / "confusion.png").is_file()


def test_eval_bad_input_is_one_line(capsys, setup, tmp_path):
    root = setup["root"]
    torch.save({"learner": {}, "optimizer": {}, "step": 1}, tmp_path / "last.pt")
    assert_one_line(*run(capsys, "eval", tmp_path / "last.pt", root / "train", "--no-progress")[::2],
                    "not a byol-wrap encoder file")
    (tmp_path / "other.bin").write_bytes(b"\x00" * 64)
    assert_one_line(*run(capsys, "eval", tmp_path / "other.bin", root / "train", "--no-progress")[::2],
                    "other.bin")
    assert_one_line(*run(capsys, "eval", setup["encoder"], root / "train" / "ant", "--no-progress")[::2],
                    "at least 2 classes")
    (tmp_path / "test" / "ant").mkdir(parents=True)
    (tmp_path / "test" / "wasp").mkdir()
    for folder in ("ant", "wasp"):
        Image.new("RGB", (12, 12)).save(tmp_path / "test" / folder / "x.png")
    assert_one_line(*run(capsys, "eval", setup["encoder"], root / "train", "--test", tmp_path / "test",
                         "--no-progress", "--workers", "0")[::2], "classes the training data lacks: wasp")
    assert_one_line(*run(capsys, "eval", setup["encoder"], root / "train", "--test-fraction", "1.5")[::2],
                    "--test-fraction")


def test_neighbours_command(capsys, setup, tmp_path):
    code, out, err = run(capsys, "neighbours", setup["encoder"], setup["root"] / "train", "--out",
                         tmp_path / "n.png", "--queries", "2", "--k", "3", "--workers", "0", "--no-progress")
    assert code == 0, err
    assert (tmp_path / "n.png").is_file() and "neighbours:" in out
    assert_one_line(*run(capsys, "neighbours", setup["encoder"], tmp_path / "none", "--out", tmp_path / "m.png")[::2],
                    "does not exist")


def test_export_format_and_refusal(capsys, setup, tmp_path):
    pytest.importorskip("safetensors")
    target = tmp_path / "e.safetensors"
    code, out, err = run(capsys, "export", setup["encoder"], "--format", "safetensors", "--out", target)
    assert code == 0 and target.is_file(), err
    before = target.read_bytes()
    assert_one_line(*run(capsys, "export", setup["encoder"], "--format", "safetensors", "--out", target)[::2],
                    "exists", "--overwrite")
    assert target.read_bytes() == before
    assert run(capsys, "export", setup["encoder"], "--format", "safetensors", "--out", target, "--overwrite")[0] == 0
    assert_one_line(*run(capsys, "export", setup["encoder"], "--format", "timm", "--out", tmp_path / "t.pth")[::2],
                    "timm/ and torchvision/")
    with pytest.raises(SystemExit) as exit_info:  # argparse's own one-line usage error
        main(["export", str(setup["encoder"]), "--format", "jpeg"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(err) == 1 and "invalid choice" in err[0]


def test_a_run_draws_neighbours_png_and_exports_from_its_checkpoint(capsys, tmp_path):
    from byol_wrap import pretrain
    from byol_wrap.job.encoder import load_encoder

    run_dir = tmp_path / "run"
    pretrain("digits", out=run_dir, model="byol_wrap/small_cnn:4", image_size=12, batch_size=16, steps=2,
             projection_size=8, projection_hidden_size=16, workers=0, progress=False)
    with Image.open(run_dir / "plots" / "neighbours.png") as image:
        width, height = image.size
    assert width > 1.5 * height > 0
    assert not list((run_dir / "plots").glob(".*.tmp"))
    pytest.importorskip("safetensors")
    assert run(capsys, "export", run_dir, "--format", "safetensors")[0] == 0
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        expected = load_encoder(run_dir / "encoder.pt")(x)
        got = load_encoder(run_dir / "encoder.safetensors")(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7 * float(expected.abs().max()))
    assert_one_line(*run(capsys, "export", run_dir, "--format", "safetensors")[::2], "exists", "--overwrite")
    assert run(capsys, "export", run_dir, "--format", "safetensors", "--overwrite")[0] == 0
    assert_one_line(*run(capsys, "export", run_dir, "--out", run_dir / "encoder.pt")[::2], "exists", "--overwrite")
    assert run(capsys, "export", run_dir)[0] == 0  # the run's own encoder.pt is rewritten (export_run's rule)


def test_eval_of_a_network_outside_the_built_in_families_needs_model(capsys, setup, tmp_path):
    source = tmp_path / "my_net.py"
    source.write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), "
                      "nn.AdaptiveAvgPool2d(1), nn.Flatten())\n")
    spec = f"{source}:build"
    from byol_wrap.job.models import build_model

    path = export_encoder(build_model(spec), tmp_path / "encoder.pt", model_spec=spec, hidden_layer=-1,
                          image_size=12, normalize=None, representation_size=4, steps=0)
    root = setup["root"]
    assert_one_line(*run(capsys, "eval", path, root / "train", "--no-progress", "--workers", "0")[::2], "--model")
    code, out, err = run(capsys, "eval", path, root / "train", "--model", spec, "--no-progress", "--workers", "0")
    assert code == 0 and "untrained" in out, err
