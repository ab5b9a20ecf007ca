"""Issue 18, the job: no code from a file, one run per folder, nothing of the user's deleted, full disks,
changed data, RUN_DIR inside the data, unreadable folders and links, many unreadable files, checkpoints by
time, a user's Dataset whose items raise.

Runs are tiny (16 px, batch 4, 32/64-wide heads, 1-6 steps): a second or two each on a CPU.
"""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from byol_wrap.job.cli import main  # noqa: E402
from byol_wrap.job.data import find_image_paths, open_images  # noqa: E402
from byol_wrap.job.encoder import export_encoder, load_encoder  # noqa: E402
from byol_wrap.job.fingerprint import compare_fingerprints, fingerprint_files  # noqa: E402
from byol_wrap.job.io import FileWriteError, atomic_save  # noqa: E402
from byol_wrap.job.lock import LOCK_NAME, RunDirLocked, RunLock  # noqa: E402
from byol_wrap.job.models import build_model, small_cnn  # noqa: E402
from byol_wrap.job.rebuild import UntrustedSpecError, is_builtin_spec  # noqa: E402
from byol_wrap.job.run_files import delete_run_files, own_temporary_files  # noqa: E402
from byol_wrap.job.skipped import SkipReport  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--image-size", "16", "--batch-size", "4", "--projection-size", "32", "--projection-hidden-size", "64",
         "--workers", "0", "--no-progress"]
SMALL_KW = dict(image_size=16, batch_size=4, projection_size=32, projection_hidden_size=64, workers=0,
                progress=False)


def write_pngs(root: Path, count: int = 8, start: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / f"{i}.png")


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    write_pngs(root)
    return root


def cli(capsys, *argv) -> tuple:
    """(exit code, stderr lines) of the command run in this process."""
    code = main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def one_line(code: int, err: list, expected_code: int, *needles: str) -> str:
    assert code == expected_code, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def interrupt_at(monkeypatch, step: int) -> None:
    """Ctrl-C in the training step after ``step`` steps (the command then exits with 130)."""
    from byol_wrap.job.run import Run

    real = Run._train_step

    def train_step(self, images):
        if self.step == step:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(Run, "_train_step", train_step)


def checkpoint_steps(monkeypatch) -> list:
    """The steps at which the run saves a checkpoint, recorded as it goes (the plots are not drawn: time)."""
    import byol_wrap.job.monitor as monitor
    import byol_wrap.job.run as run_module

    monkeypatch.setattr(monitor, "plot_training", lambda log, path: path)

    steps = []
    real = run_module.save_checkpoint

    def save(state, out):
        steps.append(state["step"])
        return real(state, out)

    monkeypatch.setattr(run_module, "save_checkpoint", save)
    return steps


def tiny_encoder(path: Path, spec) -> Path:
    return export_encoder(small_cnn(4), path, model_spec=spec, hidden_layer=-1, image_size=16, normalize=None,
                          representation_size=32, steps=0)


# ---------------------------------------------------------------- 1. a file never runs code
PAYLOADS = ["os:abort", "sys:exit", "builtins:print", "evil.py:make", "torchvision/../evil.py:make",
            "byol_wrap/small_cnn:3:evil", "timm/hf-hub:org/model"]


@pytest.mark.parametrize("spec", PAYLOADS)
def test_a_payload_spec_in_encoder_pt_is_refused_before_any_import(spec, tmp_path, monkeypatch):
    (tmp_path / "evil.py").write_text("import pathlib\npathlib.Path('RAN').write_text('x')\ndef make():\n    pass\n")
    monkeypatch.chdir(tmp_path)  # a relative spec would resolve here
    path = tiny_encoder(tmp_path / "encoder.pt", spec)
    before = set(sys.modules)
    with pytest.raises(UntrustedSpecError, match="not one of the built-in families") as info:
        load_encoder(path)
    print(info.value)
    assert not (tmp_path / "RAN").exists()
    assert not [m for m in set(sys.modules) - before if "evil" in m or "byol_wrap_user" in m]


def test_builtin_specs_are_recognised_exactly():
    for spec in ("torchvision/resnet18", "timm/resnet18", "timm/vit_tiny_patch16_224.augreg_in21k",
                 "byol_wrap/small_cnn", "byol_wrap/small_cnn:32"):
        assert is_builtin_spec(spec), spec
    for spec in PAYLOADS + ["torchvision/resnet18:x", "byol_wrap/other", "", None, 3]:
        assert not is_builtin_spec(spec), spec


def test_the_callers_own_module_or_spec_loads_a_custom_encoder(tmp_path):
    source = tmp_path / "nets.py"
    source.write_text("from byol_wrap.job.models import small_cnn\ndef make():\n    return small_cnn(4)\n")
    net = small_cnn(4).eval()
    path = export_encoder(net, tmp_path / "e.pt", model_spec=f"{source}:make", hidden_layer=-1, image_size=16,
                          normalize=None, representation_size=32, steps=0)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(load_encoder(path, model=small_cnn(4))(x), expected)
        torch.testing.assert_close(load_encoder(path, model=f"{source}:make")(x), expected)


@pytest.mark.parametrize("spec", ["os:abort", "evil.py:make"])
def test_embed_and_export_refuse_payload_specs_and_name_the_flag(spec, capsys, images, tmp_path, monkeypatch):
    (tmp_path / "evil.py").write_text("import pathlib\npathlib.Path('RAN').write_text('x')\ndef make():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    path = tiny_encoder(tmp_path / "encoder.pt", spec)
    line = one_line(*cli(capsys, "embed", path, images, "--out", tmp_path / "e.npz"), 2, "--model SPEC")
    print(line)
    assert not (tmp_path / "RAN").exists() and not (tmp_path / "e.npz").exists()
    # a run whose checkpoint records the payload: export refuses it the same way
    out = tmp_path / "run"
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL]) == 0
    capsys.readouterr()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    state["encoder"]["model_spec"] = spec
    atomic_save(state, out / "checkpoints" / "last.pt")
    one_line(*cli(capsys, "export", out, "--out", tmp_path / "x.pt"), 2, "not one of the built-in", "--model SPEC")
    assert not (tmp_path / "RAN").exists() and not (tmp_path / "x.pt").exists()


def test_the_model_flag_names_the_code_for_embed_and_export(capsys, images, tmp_path):
    source = tmp_path / "nets.py"
    source.write_text("from byol_wrap.job.models import small_cnn\ndef make():\n    return small_cnn(4)\n")
    path = tiny_encoder(tmp_path / "encoder.pt", f"{source}:make")
    assert main(["embed", str(path), str(images), "--out", str(tmp_path / "e.npz"), "--model", f"{source}:make",
                 "--workers", "0", "--no-progress"]) == 0
    with np.load(tmp_path / "e.npz", allow_pickle=False) as npz:
        assert npz["embeddings"].shape == (8, 32)


@pytest.mark.parametrize("spec, needle", [("sys:exit", "SystemExit"), ("builtins:print", "NoneType")])
def test_a_user_spec_that_returns_no_module_is_an_error_not_exit_0(spec, needle, capsys, images, tmp_path):
    one_line(*cli(capsys, "pretrain", images, "--out", tmp_path / "run", "--model", spec, *SMALL), 2, spec, needle)
    with pytest.raises(TypeError, match="not a torch.nn.Module|instead of returning"):
        build_model(spec)


def test_weights_pointing_at_a_checkpoint_say_what_to_pass(capsys, images, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL]) == 0
    capsys.readouterr()
    one_line(*cli(capsys, "pretrain", images, "--out", tmp_path / "run2", "--weights", out / "checkpoints" / "last.pt",
                  *SMALL), 2, "run checkpoint, not a state_dict", str(out / "encoder.pt"))


# ---------------------------------------------------------------- 2. a full disk is a one-line stop
class FullDisk:
    """Makes the writes of files named ``name`` fail as a full disk does: the first ``write`` past a few
    bytes raises ENOSPC (torch's zip writer turns that into a RuntimeError, as on a real disk)."""

    def __init__(self, monkeypatch, name: str, after: int = 0) -> None:
        self.name, self.after, self.calls = name, after, 0
        real_fdopen = os.fdopen
        disk = self

        class Handle:
            def __init__(self, handle) -> None:
                self._handle, self._written = handle, 0

            def write(self, data) -> int:
                self._written += len(data)
                if self._written > 64:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return self._handle.write(data)

            def __getattr__(self, attr):
                return getattr(self._handle, attr)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._handle.close()

        def fdopen(fd, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
            if Path(target).name.startswith(f".{disk.name}."):
                disk.calls += 1
                if disk.calls > disk.after:
                    return Handle(handle)
            return handle

        monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the file written through /proc")
@pytest.mark.parametrize("name, after", [("last.pt", 1), ("encoder.pt", 0), ("metrics.jsonl", 1),
                                         ("training.png", 0), ("augmentations.png", 0), ("skipped.txt", 0)])
def test_full_disk_at_every_run_file_is_a_one_line_stop(name, after, capsys, images, tmp_path, monkeypatch):
    (images / "broken.png").write_bytes(b"not a png")  # so that skipped.txt is written
    out = tmp_path / "run"
    FullDisk(monkeypatch, name, after)
    code, err = cli(capsys, "pretrain", images, "--out", out, "--steps", "4", "--checkpoint-every", "2",
                    "--log-every", "1", *SMALL)
    err = [line for line in err if not line.startswith("skipped ")]  # the warning about broken.png
    line = one_line(code, err, 1, name, "No space left on device")
    print(line)
    checkpoint = out / "checkpoints" / "last.pt"
    if checkpoint.exists():
        assert "intact" in line and str(checkpoint) in line
        torch.load(checkpoint, weights_only=True)  # complete
    assert not list(out.rglob("*.tmp")), "no temporary file left behind"
    monkeypatch.undo()
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "4", "--checkpoint-every", "2", *SMALL]) == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_full_disk_in_tensorboards_writer_thread_ends_the_events_not_the_run(capsys, images, tmp_path, monkeypatch):
    """TensorBoard writes its events in a thread, which keeps the error and raises it at the next call."""
    record_writer = pytest.importorskip("tensorboard.summary.writer.record_writer")

    def full(self, data) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    out = tmp_path / "run"
    code, err = cli(capsys, "pretrain", images, "--out", out, "--steps", "4", "--log-every", "1", *SMALL)
    assert code == 0, err
    warnings = [line for line in err if "TensorBoard" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], steps
    assert (out / "encoder.pt").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the file written through /proc")
def test_full_disk_on_export_and_embed_is_a_one_line_stop(capsys, images, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL]) == 0
    capsys.readouterr()
    FullDisk(monkeypatch, "copy.pt")
    one_line(*cli(capsys, "export", out, "--out", tmp_path / "copy.pt"), 1, "copy.pt", "No space left")
    FullDisk(monkeypatch, "e.npz")
    one_line(*cli(capsys, "embed", out / "encoder.pt", images, "--out", tmp_path / "e.npz", "--workers", "0",
                  "--no-progress"), 1, "e.npz", "No space left")
    assert not (tmp_path / "copy.pt").exists() and not (tmp_path / "e.npz").exists()


def test_file_write_error_comes_from_torchs_runtime_error(tmp_path, monkeypatch):
    """torch.save raises RuntimeError('[enforce fail ...]') when the file's write fails; atomic_write names the file."""
    target = tmp_path / "w.pt"
    atomic_save({"w": torch.zeros(10)}, target)
    before = target.read_bytes()
    FullDisk(monkeypatch, "w.pt")
    with pytest.raises(FileWriteError, match=r"could not write .*w\.pt: No space left on device") as info:
        atomic_save({"w": torch.zeros(100_000)}, target)
    assert isinstance(info.value.__cause__, RuntimeError) and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.pt"]


# ---------------------------------------------------------------- 3. one run per folder
def test_a_second_run_into_a_locked_folder_is_one_line_naming_the_process(capsys, images, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        line = one_line(*cli(capsys, "pretrain", images, "--out", out, "--steps", "1", *SMALL), 2,
                        f"process {os.getpid()}", str(out))
        print(line)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME], "the refused run wrote nothing"
        one_line(*cli(capsys, "export", out), 2, f"process {os.getpid()}")
    assert not (out / LOCK_NAME).exists()
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL]) == 0
    assert not (out / LOCK_NAME).exists(), "the run released its lock"


def test_the_lock_is_exclusive_and_released():
    import tempfile

    folder = tempfile.mkdtemp()
    first = RunLock(folder).acquire()
    with pytest.raises(RunDirLocked) as info:
        RunLock(folder).acquire()
    assert info.value.pid == os.getpid()
    first.release()
    RunLock(folder).acquire().release()


@pytest.mark.integration
def test_kill_9_leaves_no_stale_lock_and_concurrent_runs_are_refused(images, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", BYOL_WRAP_TEST_STEP_SLEEP="0.5")
    command = [sys.executable, "-m", "byol_wrap", "pretrain", str(images), "--out", str(out), "--steps", "40", *SMALL]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1 and f"process {first.pid}" in lines[0], second.stderr
    finally:
        first.kill()  # SIGKILL: no clean-up runs
        first.wait()
    env["BYOL_WRAP_TEST_STEP_SLEEP"] = "0"
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert "resuming from step" in third.stdout


@pytest.mark.integration
def test_under_torchrun_rank_0_takes_the_lock_and_every_rank_stops(images, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "byol_wrap",
               "pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL[:2], "--batch-size", "2", *SMALL[4:]]
    with RunLock(out):
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    said = [line for line in refused.stderr.splitlines() if f"process {os.getpid()}" in line]
    # rank 0's line, and rank 1's with rank 0's message unless torchrun ended rank 1 first: no rank waits
    assert 1 <= len(said) <= 2 and all(line.startswith("byol-wrap pretrain: error: RUN_DIR") for line in said), \
        refused.stderr
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (out / LOCK_NAME).exists()


# ---------------------------------------------------------------- 4. nothing the user owns is deleted
USER_FILES = {"checkpoints/last.pt.bak": "user", ".draft.tmp": "user", "plots/notes.tmp": "user",
              "plots/.notes.png.tmp": "user", "checkpoints/.last.pt.mine.tmp": "user", "notes.txt": "user",
              "tensorboard/my_notes.txt": "user"}


def plant(out: Path) -> None:
    for name, text in USER_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)


def assert_user_files_intact(out: Path) -> None:
    for name, text in USER_FILES.items():
        assert (out / name).read_text() == text, name


def test_resume_and_overwrite_delete_only_the_runs_files(images, tmp_path):
    from byol_wrap.job.train import pretrain

    out = tmp_path / "run"
    out.mkdir()
    plant(out)
    (out / "checkpoints" / ".last.pt.k3x_9abz.tmp").write_bytes(b"a killed write's temporary file")
    pretrain(images, out=out, steps=2, checkpoint_every=1, **SMALL_KW)
    assert_user_files_intact(out)
    assert not (out / "checkpoints" / ".last.pt.k3x_9abz.tmp").exists(), "the run's own leftover is removed"
    pretrain(images, out=out, steps=2, overwrite=True, **SMALL_KW)
    assert_user_files_intact(out)
    deleted = delete_run_files(out)
    assert {p.relative_to(out).as_posix() for p in deleted} >= {"checkpoints/last.pt", "encoder.pt", "metrics.jsonl"}
    assert_user_files_intact(out)
    assert own_temporary_files(out) == []


@pytest.mark.parametrize("foreign", ["metrics.jsonl", "plots/training.png", "skipped.txt"])
def test_a_fresh_run_refuses_a_folder_holding_run_files_of_something_else(foreign, capsys, images, tmp_path):
    out = tmp_path / "run"
    (out / foreign).parent.mkdir(parents=True)
    (out / foreign).write_text("someone else's")
    one_line(*cli(capsys, "pretrain", images, "--out", out, "--steps", "1", *SMALL), 2, foreign, "--overwrite")
    assert (out / foreign).read_text() == "someone else's"
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", "--overwrite", *SMALL]) == 0


def test_a_run_killed_before_its_first_checkpoint_starts_again_and_says_so(capsys, images, tmp_path):
    from byol_wrap.job.run_files import claim

    out = tmp_path / "run"
    out.mkdir()
    claim(out)  # what a run writes first: its run files are then known to be a byol-wrap run's
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL]) == 0
    assert f"no checkpoint in {out} yet: starting from step 0" in capsys.readouterr().out


def test_export_out_rules(capsys, images, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL]) == 0
    capsys.readouterr()
    checkpoint = out / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    for flags in ([], ["--overwrite"]):
        one_line(*cli(capsys, "export", out, "--out", checkpoint, *flags), 2, "checkpoint")
    assert checkpoint.read_bytes() == before
    mine = tmp_path / "mine.pt"
    mine.write_text("the user's file")
    one_line(*cli(capsys, "export", out, "--out", mine), 2, str(mine), "--overwrite")
    assert mine.read_text() == "the user's file"
    assert main(["export", str(out), "--out", str(mine), "--overwrite"]) == 0
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main(["export", str(out), "--out", str(folder)]) == 0
    assert load_encoder(folder / "encoder.pt").meta["model_spec"] == "byol_wrap/small_cnn"


# ---------------------------------------------------------------- 6. data changed since the run started
def test_changed_data_is_detected_named_and_refused_unless_allowed(capsys, images, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["pretrain", str(images), "--out", str(out), "--steps", "4", "--checkpoint-every", "2", *SMALL]
    interrupt_at(monkeypatch, 2)
    assert main(args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    write_pngs(images, count=3, start=100)  # 3 files added
    (images / "0.png").unlink()              # 1 removed
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / "1.png")  # 1 modified
    os.utime(images / "1.png", ns=(0, 0))
    line = one_line(*cli(capsys, *args), 2, "3 files added", "1 file removed", "1 file modified", "100.png",
                    "--allow-data-change")
    print(line)
    assert main([*args, "--allow-data-change"]) == 0
    out_text = capsys.readouterr()
    assert "no longer match an uninterrupted run" in out_text.err + out_text.out
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 4


def test_changed_data_under_epochs_says_how_to_keep_the_length(capsys, images, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["pretrain", str(images), "--out", str(out), "--epochs", "2", "--checkpoint-every", "1", *SMALL]
    interrupt_at(monkeypatch, 1)
    assert main(args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    write_pngs(images, count=4, start=100)  # one more batch per epoch: --epochs 2 is now 6 steps, not 4
    one_line(*cli(capsys, *args, "--allow-data-change"), 2, "--steps 4 keeps its length")
    assert main([*args[:4], "--steps", "4", *args[6:], "--allow-data-change"]) == 0


def test_fingerprints_against_hand_made_changes(tmp_path):
    files = []
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(name.encode())
        files.append(str(tmp_path / name))
    before = fingerprint_files(files)
    (tmp_path / "c").write_bytes(b"longer")
    (tmp_path / "d").write_bytes(b"d")
    after = fingerprint_files(files[1:] + [str(tmp_path / "d")])
    change = compare_fingerprints(before, after)
    assert change.added == [str(tmp_path / "d")] and change.removed == [str(tmp_path / "a")]
    assert change.modified == [str(tmp_path / "c")]
    assert not compare_fingerprints(before, fingerprint_files(files[:2] + [str(tmp_path / "c")])).added
    assert not compare_fingerprints(None, after)


# ---------------------------------------------------------------- 7. RUN_DIR inside the data folder
def test_run_dir_inside_the_data_is_left_out_of_the_scan_and_said_once(capsys, images):
    out = images / "run"
    for _ in range(2):
        assert main(["pretrain", str(images), "--out", str(out), "--steps", "2", "--overwrite", *SMALL]) == 0
        text = capsys.readouterr()
        said = [line for line in (text.out + text.err).splitlines() if "inside the data folder" in line]
        assert len(said) == 1, text
    dataset = open_images(images, 16, exclude=[out])
    assert len(dataset) == 8 and not [p for p in dataset.paths if str(out) in p]


# ---------------------------------------------------------------- 8. unreadable folders, symbolic links
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_folder_is_listed_in_skipped_txt(images, tmp_path):
    from byol_wrap.job.train import pretrain

    locked = images / "locked"
    write_pngs(locked, 2)
    locked.chmod(0)
    try:
        pretrain(images, out=tmp_path / "run", steps=1, **SMALL_KW)
    finally:
        locked.chmod(0o755)
    assert f"{locked}\tfolder cannot be read" in (tmp_path / "run" / "skipped.txt").read_text()


def test_an_unreadable_folder_is_reported_by_the_scan(images, monkeypatch):
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    write_pngs(images / "locked", 2)
    monkeypatch.setattr(os, "scandir", scandir)
    problems = []
    found = find_image_paths(images, problems=problems)
    assert len(found) == 8 and problems == [(str(images / "locked"), "folder cannot be read: Permission denied")]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_symlink_rule(capsys, images, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_pngs(elsewhere, 2, start=50)
    (images / "linked").symlink_to(elsewhere)        # outside the data folder: followed
    (images / "root").symlink_to(os.path.abspath(os.sep))  # a system root: not followed, and said
    (images / "up").symlink_to(tmp_path)              # above the data folder: not followed, and said
    problems = []
    found = find_image_paths(images, problems=problems)
    assert len(found) == 10 and sum("linked" in p for p in found) == 2
    assert [p for p, _ in problems] == [str(images / "root"), str(images / "up")]
    assert "system root" in problems[0][1] and "holds the data folder" in problems[1][1]
    out = tmp_path / "run"
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "1", *SMALL]) == 0
    skipped = (out / "skipped.txt").read_text()
    assert f"{images / 'root'}\tsymbolic link to" in skipped and f"{images / 'up'}\t" in skipped


# ---------------------------------------------------------------- 9. many unreadable files
def test_skip_report_is_linear_capped_and_written_on_demand(tmp_path):
    lines = []
    report = SkipReport(warn=lines.append, warnings_per_kind=3)
    pairs = [(f"f{i}.jpg", "UnidentifiedImageError: not an image") for i in range(20_000)]
    start = time.perf_counter()
    report.add(pairs)
    report.add(pairs)  # seen again next epoch: no new entries, no new lines
    assert len(report) == 20_000 and len(lines) == 4, lines
    assert "not shown one by one" in lines[-1]
    assert time.perf_counter() - start < 5, "a list search would take minutes here"
    path = tmp_path / "skipped.txt"
    assert report.write(path) and not report.write(path), "unchanged: not rewritten"
    assert path.read_text().count("\n") == 20_000


def test_mostly_unreadable_data_stops_with_a_clear_error(capsys, tmp_path):
    root = tmp_path / "junk"
    write_pngs(root, 4)
    for i in range(12):
        (root / f"junk{i}.jpg").write_bytes(b"not a jpeg")
    code, err = cli(capsys, "pretrain", root, "--out", tmp_path / "run", "--steps", "50", *SMALL)
    warnings = [line for line in err if line.startswith("skipped ")]
    assert len(warnings) <= 6, warnings  # capped: 5 named, then one line for the rest
    line = one_line(code, [line for line in err if not line.startswith("skipped ")], 2, "could not be decoded",
                    "skipped.txt")
    print(line)
    assert (tmp_path / "run" / "skipped.txt").read_text().count("\n") >= 8


def test_warnings_for_the_same_reason_are_capped(capsys, tmp_path):
    root = tmp_path / "some_junk"
    write_pngs(root, 20)
    for i in range(12):
        (root / f"junk{i}.jpg").write_bytes(b"not a jpeg")
    assert main(["pretrain", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--checkpoint-every", "100",
                 *SMALL, "--batch-size", "8"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped ") <= 6, err
    assert (tmp_path / "run" / "skipped.txt").read_text().count("\n") == 12


# ---------------------------------------------------------------- 10. clearer messages
def test_data_smaller_than_the_batch_names_the_datas_size(capsys, tmp_path):
    one = tmp_path / "one"
    write_pngs(one, 1)
    one_line(*cli(capsys, "pretrain", one, "--out", tmp_path / "r1", *SMALL, "--batch-size", "2"), 2,
             "(1 image)", "at least 2 images")
    three = tmp_path / "three"
    write_pngs(three, 3)
    one_line(*cli(capsys, "pretrain", three, "--out", tmp_path / "r3", *SMALL, "--batch-size", "8"), 2,
             "--batch-size 8", "(3 images)", "--batch-size 3 or less")


def test_epochs_on_a_run_started_with_steps_says_which_flag(capsys, images, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 1)
    assert main(["pretrain", str(images), "--out", str(out), "--steps", "4", "--checkpoint-every", "1", *SMALL]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    one_line(*cli(capsys, "pretrain", images, "--out", out, "--epochs", "3", *SMALL), 2, "(--steps 4)",
             "(--epochs 3)", "resume it with the arguments it was started with")
    assert main(["pretrain", str(images), "--out", str(out), "--epochs", "2", *SMALL]) == 0, \
        "--epochs 2 is --steps 4 here: the same run"


# ---------------------------------------------------------------- 13. checkpoints by time
def test_checkpoints_every_tenth_of_the_run_and_by_wall_time(images, tmp_path, monkeypatch):
    from byol_wrap.job.train import pretrain

    steps = checkpoint_steps(monkeypatch)
    pretrain(images, out=tmp_path / "tenths", steps=20, **SMALL_KW)
    assert steps == list(range(2, 21, 2)), "by default: every tenth of the run"
    steps.clear()
    pretrain(images, out=tmp_path / "time", steps=4, checkpoint_every=100, checkpoint_minutes=1e-9, **SMALL_KW)
    assert steps == [1, 2, 3, 4], "a wall-time interval that has always passed: after every step"
    steps.clear()
    pretrain(images, out=tmp_path / "steps_only", steps=4, checkpoint_every=100, checkpoint_minutes=0, **SMALL_KW)
    assert steps == [4]


def test_a_kill_before_the_first_time_checkpoint_loses_at_most_the_interval(images, tmp_path, monkeypatch, capsys):
    """The issue's case: a long run killed at step 17 of 40 resumes from its last time-triggered checkpoint."""
    out = tmp_path / "run"
    args = ["pretrain", str(images), "--out", str(out), "--steps", "40", "--checkpoint-every", "1000",
            "--checkpoint-minutes", "1e-9", *SMALL]
    steps = checkpoint_steps(monkeypatch)
    interrupt_at(monkeypatch, 4)
    assert main(args) == 130
    assert steps == [1, 2, 3, 4]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 4


def test_default_checkpoint_interval_docstring():
    from byol_wrap.job.train import pretrain

    line = pretrain.__doc__.split("checkpoint_every:")[1].split("\n")[0]
    assert "a tenth of the run" in line and "50" not in line


# ---------------------------------------------------------------- 14. a user's Dataset whose items raise
def test_dataset_items_that_raise_are_skipped_and_reported_like_files(tmp_path, capsys):
    from torchvision.datasets import ImageFolder

    from byol_wrap.job.train import pretrain

    root = tmp_path / "folder" / "class_a"
    write_pngs(root, 10)
    (root / "0.png").write_bytes(b"damaged")  # the very first item
    (root / "5.png").write_bytes(b"damaged")
    dataset = ImageFolder(root.parent)
    out = tmp_path / "run"
    pretrain(dataset, out=out, epochs=1, **SMALL_KW)
    skipped = (out / "skipped.txt").read_text()
    assert f"{root / '0.png'} (dataset[0])" in skipped and f"{root / '5.png'} (dataset[5])" in skipped
    assert "2 files skipped" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"[05]\.png \(dataset\[[05]\]\)"):
        pretrain(dataset, out=tmp_path / "strict", epochs=1, strict=True, **SMALL_KW)


def test_a_forked_child_does_not_keep_the_run_folder_locked(tmp_path):
    """DataLoader workers are forked: a worker outliving a killed run must not hold its lock."""
    import os
    import signal
    import time

    from byol_wrap.job.lock import RunDirLocked, RunLock

    read_fd, write_fd = os.pipe()
    parent = os.fork()
    if parent == 0:  # the "run": takes the lock, forks a long-lived "worker", then waits to be killed
        try:
            RunLock(tmp_path).acquire()
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            os.write(write_fd, b"locked")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        assert os.read(read_fd, 6) == b"locked"
        with pytest.raises(RunDirLocked):
            RunLock(tmp_path).acquire()
        os.kill(parent, signal.SIGKILL)
        os.waitpid(parent, 0)
        lock = RunLock(tmp_path).acquire()  # the orphaned worker is still alive, the lock is free
        lock.release()
    finally:
        os.close(read_fd)
        os.close(write_fd)
