"""byol_wrap.job.io: atomic writes leave the old file or the new one, never a mix or a temp file;
load_torch_file names the file and the problem."""
import pickle
from pathlib import Path

import pytest
import torch

from byol_wrap.job.io import atomic_save, atomic_write, atomic_write_bytes, atomic_write_text, load_torch_file


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_writes_leave_only_the_file(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01\x02")
    atomic_write_text(tmp_path / "b.txt", "h\u00e9llo\n")
    atomic_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01\x02"
    assert (tmp_path / "b.txt").read_bytes() == "h\u00e9llo\n".encode("utf-8")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
    assert _listing(tmp_path) == ["a.bin", "b.txt", "c.pt"]


def test_replacing_an_existing_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)
    atomic_save({"step": 2}, path)
    assert load_torch_file(path, "checkpoint") == {"step": 2}
    assert _listing(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    def writer(handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, writer)
    assert load_torch_file(path, "checkpoint") == {"step": 1}
    assert _listing(tmp_path) == ["last.pt"]  # the temporary file is gone


def test_interrupted_torch_save_keeps_the_old_file(tmp_path):
    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    path = tmp_path / "encoder.pt"
    atomic_save({"a": torch.ones(2)}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"a": torch.zeros(1000), "b": Unsaveable()}, path)
    assert torch.equal(load_torch_file(path)["a"], torch.ones(2))
    assert _listing(tmp_path) == ["encoder.pt"]


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "x.txt", "x")


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing\.pt does not exist"):
        load_torch_file(tmp_path / "missing.pt", "checkpoint")


def _truncated(tmp_path):
    path = tmp_path / "truncated.pt"
    atomic_save({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _foreign_pickle(tmp_path):
    path = tmp_path / "foreign.pt"
    path.write_bytes(pickle.dumps(pytest.MonkeyPatch(), protocol=2))  # a pickled object weights_only refuses
    return path


def _text(tmp_path):
    path = tmp_path / "text.pt"
    path.write_text("just some text\n")
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    return path


@pytest.mark.parametrize("make", [_truncated, _foreign_pickle, _text, _empty])
def test_unreadable_files_get_one_clear_error(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(RuntimeError) as info:
        load_torch_file(path, "checkpoint", hint="delete it or pass --overwrite")
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} is not a readable byol-wrap file (truncated or foreign?): ")
    assert message.endswith("; delete it or pass --overwrite")
    assert "\n" not in message
    if make is _empty:
        assert "empty" in message


@pytest.mark.integration
def test_kill_9_during_writes_leaves_old_or_new(tmp_path):
    """A writer killed with SIGKILL at a random moment: the file loads as one complete version."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from byol_wrap.job.io import remove_temporary_files, temporary_files

    path = tmp_path / "last.pt"
    atomic_save({"version": -1, "w": torch.zeros(200_000)}, path)
    code = ("import sys, torch; from byol_wrap.job.io import atomic_save\n"
            "for i in range(10**6):\n"
            "    atomic_save({'version': i, 'w': torch.full((200_000,), float(i))}, sys.argv[1])\n"
            "    print(i, flush=True)\n")
    root = Path(__file__).resolve().parents[1]
    for delay in (0.5,):  # one kill: a subprocess start costs seconds on the shared CPU
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=root, stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(root)})
        proc.stdout.readline()  # one write done: the writer is in its loop
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        state = load_torch_file(path, "checkpoint")
        assert torch.equal(state["w"], torch.full((200_000,), float(state["version"])))
        remove_temporary_files(path)  # a kill mid-write leaves its temporary file; start-up removes it
        assert temporary_files(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
