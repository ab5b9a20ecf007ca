"""kill -9 of a running ``python -m byol_wrap pretrain``, then the same command again: it resumes from its
last checkpoint and reproduces the losses of an uninterrupted run (CPU, same seed, rel. tol. 1e-6).

The uninterrupted reference runs in this process (one thread, like the subprocesses), through the Python
call that the command makes.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10  # 2 epochs of 4 batches and a part: the kills land mid-epoch, the runs cross epoch boundaries

pytestmark = pytest.mark.usefixtures("one_thread")


def command(data: Path, out: Path) -> list:
    return [sys.executable, "-m", "byol_wrap", "pretrain", str(data), "--out", str(out), "--image-size", "16",
            "--batch-size", "4", "--steps", str(STEPS), "--checkpoint-every", "3", "--log-every", "1",
            "--projection-size", "32", "--projection-hidden-size", "64", "--workers", "1", "--no-progress"]


def environment(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("BYOL_WRAP_TEST_CRASH_IN_CHECKPOINT", None)
    env.update(extra)
    return env


def losses(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder of 18 small PNGs (4 full batches of 4 per epoch) in two nested folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(18):
        folder = root / ("x" if i % 3 else "y/z")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    from byol_wrap.job.train import pretrain

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    pretrain(data, out=out, image_size=16, batch_size=4, steps=STEPS, checkpoint_every=3, log_every=1,
             projection_size=32, projection_hidden_size=64, workers=1, progress=False)
    found = losses(out)
    assert sorted(found) == list(range(1, STEPS + 1))
    return found


def assert_resumed_equal(out: Path, data: Path, reference: dict, resumed_from: int) -> None:
    result = subprocess.run(command(data, out), env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming from step {resumed_from}" in result.stdout
    found = losses(out)
    assert sorted(found) == list(range(1, STEPS + 1)), "one row per step, none twice, none missing"
    for step in range(1, STEPS + 1):
        assert found[step] == pytest.approx(reference[step], rel=1e-6, abs=0), f"step {step}"
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == STEPS and state["finished"]


@pytest.mark.integration
def test_kill_9_after_a_checkpoint_then_resume(data, reference, tmp_path):
    out = tmp_path / "run"
    # slow each step down (test hook) so the kill lands while the run is still going
    process = subprocess.Popen(command(data, out), env=environment(BYOL_WRAP_TEST_STEP_SLEEP="0.3"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists():
            try:
                if torch.load(checkpoint, weights_only=True)["step"] >= 3:
                    break
            except Exception:  # being replaced right now: the next poll sees the new file
                pass
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 3 <= step < STEPS and step % 3 == 0
    assert_resumed_equal(out, data, reference, step)


@pytest.mark.integration
def test_kill_9_during_a_checkpoint_write_then_resume(data, reference, tmp_path):
    out = tmp_path / "run"
    # test hook: at the step-9 checkpoint the process writes half of the temporary file and SIGKILLs itself
    result = subprocess.run(command(data, out), env=environment(BYOL_WRAP_TEST_CRASH_IN_CHECKPOINT="9"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert any(p.name.endswith(".tmp") for p in (out / "checkpoints").iterdir()), "the write was interrupted"
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 6, "the previous one is intact"
    assert_resumed_equal(out, data, reference, 6)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.pt"], "the torn temporary file is gone"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", "foreign"])
def test_corrupt_or_foreign_last_pt_is_named(data, tmp_path, content):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    path = out / "checkpoints" / "last.pt"
    if content == "foreign":
        torch.save({"model": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    from byol_wrap.job.cli import main

    code = main(command(data, out)[3:])
    assert code == 2
    assert path.exists(), "nothing the user did not ask to delete is deleted"


def test_corrupt_last_pt_message(data, tmp_path, capsys):
    from byol_wrap.job.cli import main

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    path = out / "checkpoints" / "last.pt"
    path.write_bytes(b"\x80\x02 half a pickle")
    assert main(command(data, out)[3:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "Traceback" not in err[0]


@pytest.mark.integration
def test_torchrun_two_cpu_processes_crash_and_resume(tmp_path):
    """``torchrun --nproc_per_node=2`` (gloo): rank 0 is killed inside the step-4 checkpoint write, the same
    command resumes from step 2; only rank 0 wrote files, and skipped.txt has both ranks' unreadable files."""
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(2)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)).save(root / f"{i}.png")
    broken = sorted([str(root / "broken_a.jpg"), str(root / "broken_b.png")])
    for path in broken:
        Path(path).write_bytes(b"not an image")
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "byol_wrap",
            "pretrain", str(root), "--out", str(out), "--image-size", "16", "--batch-size", "2", "--steps", "6",
            "--checkpoint-every", "2", "--log-every", "1", "--projection-size", "32", "--projection-hidden-size",
            "64", "--workers", "0", "--no-progress"]
    crashed = subprocess.run(argv, env=environment(BYOL_WRAP_TEST_CRASH_IN_CHECKPOINT="4"), capture_output=True,
                             text=True, timeout=300)
    assert crashed.returncode != 0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    resumed = subprocess.run(argv, env=environment(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("resuming from step 2") == 1, "only rank 0 speaks"
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 6 and state["finished"] and len(state["rng"]) == 2 and state["arguments"]["world_size"] == 2
    assert sorted(losses(out)) == list(range(1, 7))
    assert sorted(line.split("\t")[0] for line in (out / "skipped.txt").read_text().splitlines()) == broken
    assert len(list((out / "tensorboard").glob("events.*"))) == 2, "one event file per launch: rank 0's"
    torch.load(out / "encoder.pt", weights_only=True)


def test_logged_loss_is_the_mean_over_ranks(tmp_path):
    """metrics.jsonl's loss under torchrun is every rank's loss averaged (_World.mean), not rank 0's."""
    script = tmp_path / "mean.py"
    script.write_text(
        "import os\n"
        "from byol_wrap.job.world import World as _World\n"
        "world = _World('cpu')\n"
        "print(f'rank {world.rank}: {world.mean(float(world.rank + 1) ** 2)!r}', flush=True)\n"
        "world.close()\n"
    )
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script)], env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = (1.0 ** 2 + 2.0 ** 2) / 2
    found = sorted(re.findall(r"rank (\d): ([0-9.]+)", result.stdout))  # the two processes' lines may interleave
    assert found == [("0", repr(expected)), ("1", repr(expected))], result.stdout
