"""The decoded-image cache (byol_wrap.job.data.cache): exact, kill-safe, notices changed files, shares a DIR.

The reference everywhere is decoding without the cache (``ImageFiles`` / ``read_image``), never the cache's
own output.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from byol_wrap.job.data import ImageFiles, cache_store, make_loader, open_images, read_image
from byol_wrap.job.data import cache as cache_module
from byol_wrap.job.data.cache import CachedImages, CacheError, ImageCache, attach_cache, remove_run_cache
from byol_wrap.job.data.cache_store import MARKS, RECORDS

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

LOAD = 20


def _photo(seed: int, size) -> Image.Image:
    g = np.random.default_rng(seed)
    low = g.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(low).resize(size, Image.BICUBIC)


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(9):
        _photo(i, (30 + 3 * i, 24 + 2 * i)).save(root / f"{i:02d}.jpg", quality=90)
    _photo(20, (40, 28)).convert("L").save(root / "sub" / "grey.png")
    _photo(21, (26, 33)).convert("RGBA").save(root / "sub" / "alpha.png")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def _decoded(dataset) -> List:
    return [dataset[i][0] for i in range(len(dataset))]


def _batches(dataset, workers: int = 0, epochs=(0, 1)):
    loader = make_loader(dataset, 4, workers=workers, seed=3, drop_last=False)
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        out += [(b.images.clone(), b.indices.clone(), list(b.skipped)) for b in loader]
    loader.close()
    return out


def _assert_same_batches(got, want) -> None:
    assert len(got) == len(want)
    for k, ((gi, gx, gs), (wi, wx, ws)) in enumerate(zip(got, want)):
        assert torch.equal(gx, wx), f"batch {k}: indices {gx.tolist()} != {wx.tolist()}"
        assert gs == ws, f"batch {k}: skipped {gs} != {ws}"
        assert gi.dtype == wi.dtype and gi.shape == wi.shape, f"batch {k}: {gi.shape} {gi.dtype} vs {wi.shape}"
        assert torch.equal(gi, wi), f"batch {k}: {(gi.int() - wi.int()).abs().max()} max difference"


def _open(folder: Path, run: Path, cache="auto", lines=None):
    said = [] if lines is None else lines
    return attach_cache(open_images(folder, LOAD), cache, run, say=said.append), said


def test_batches_are_bit_identical_to_decoding_and_later_epochs_read_the_cache(folder, tmp_path):
    reference = _batches(open_images(folder, LOAD))
    cached, said = _open(folder, tmp_path / "run")
    assert isinstance(cached, CachedImages), said
    assert len(said) == 1 and "new: the first epoch decodes and fills it" in said[0], said
    first = _batches(cached, epochs=(0,))
    assert cached.cache.filled() == len(cached) - 1  # every readable file, the broken one never
    _assert_same_batches(first + _batches(cached, epochs=(1,)), reference)
    # the second epoch came from the records: they hold exactly read_image's bytes
    for i, path in enumerate(cached.paths):
        slot = int(cached.cache.slot_of[i])
        if path.endswith("broken.jpg"):
            assert not cached.cache.marked(np.asarray([slot]))[0]
            continue
        assert torch.equal(torch.from_numpy(cached.cache.read(slot)), read_image(path, LOAD)), path


def test_worker_processes_write_and_read_the_same_bytes(folder, tmp_path):
    reference = _batches(open_images(folder, LOAD), epochs=(0, 1, 2))
    cached, _ = _open(folder, tmp_path / "run")
    _assert_same_batches(_batches(cached, workers=1, epochs=(0, 1, 2)), reference)


def test_reopened_cache_is_reused_and_items_match(folder, tmp_path):
    cached, _ = _open(folder, tmp_path / "run")
    _batches(cached, epochs=(0,))
    cached.close()
    again, said = _open(folder, tmp_path / "run")
    assert f"{len(again) - 1} of {len(again)} images cached" in said[0], said
    for got, want in zip(_decoded(again), _decoded(open_images(folder, LOAD))):
        assert (got is None and want is None) or torch.equal(got, want)


def _kill_writer(folder: Path, run: Path, delay: float) -> None:
    """A process filling the cache (slowly) is killed with SIGKILL while it writes."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from byol_wrap.job.data import open_images\n"
        "from byol_wrap.job.data import cache as c\n"
        "ds = c.attach_cache(open_images(sys.argv[1], 20), 'auto', Path(sys.argv[2]), say=print)\n"
        "orig = c.ImageCache.write\n"
        "def slow(self, slot, image):\n"
        "    time.sleep(0.05)\n"
        "    return orig(self, slot, image)\n"
        "c.ImageCache.write = slow\n"
        "print('ready', flush=True)\n"
        "for i in range(len(ds)):\n"
        "    ds[i]\n"
        "    if i == 3: ds.sync()\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder), str(run)], env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    while "ready" not in process.stdout.readline():
        assert process.poll() is None, "the writer died before it was ready"
    time.sleep(delay)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_kill_9_while_writing_leaves_a_usable_or_redone_cache(folder, tmp_path):
    _kill_writer(folder, tmp_path / "run", 0.33)  # after the sync of the first 4 records, while writing more
    cached, said = _open(folder, tmp_path / "run")
    assert isinstance(cached, CachedImages) and len(said) == 1, said
    for got, want in zip(_decoded(cached), _decoded(open_images(folder, LOAD))):
        assert (got is None and want is None) or torch.equal(got, want)
    assert cached.cache.filled() == len(cached) - 1


def test_torn_record_and_unsynced_marks_are_decoded_again(folder, tmp_path):
    """A record cut off mid-write (mark 0) and records written after the last sync (mark 1, maybe not on disk
    after a power loss) are never read back: reopening decodes them again."""
    cached, _ = _open(folder, tmp_path / "run")
    _batches(cached, epochs=(0,))
    cached.sync()
    cache = cached.cache
    torn, unsynced = int(cache.slot_of[0]), int(cache.slot_of[1])
    record = cache.layout.record_bytes
    with open(cache.folder / RECORDS, "r+b") as handle:  # garbage over both records
        for slot in (torn, unsynced):
            handle.seek(slot * record)
            handle.write(b"\x07" * (record // 2))
    marks = np.fromfile(cache.folder / MARKS, dtype=np.uint8)
    marks[torn], marks[unsynced] = 0, 1
    marks.tofile(cache.folder / MARKS)
    os.close(cache._lock_fd)  # the process "died": no close(), no sync
    cache._lock_fd = None
    again, said = _open(folder, tmp_path / "run")
    assert "1 written after the last sync (a killed run)" in said[0], said
    assert again.cache.filled() == len(again) - 3  # the torn, the unsynced and the broken file
    for got, want in zip(_decoded(again), _decoded(open_images(folder, LOAD))):
        assert (got is None and want is None) or torch.equal(got, want)


def test_changed_vanished_and_new_files_are_noticed_from_the_index(folder, tmp_path):
    cached, _ = _open(folder, tmp_path / "run")
    _batches(cached, epochs=(0,))
    cached.close()
    _photo(99, (50, 31)).save(folder / "03.jpg", quality=90)    # changed content, same name
    (folder / "05.jpg").unlink()                                 # vanished
    _photo(98, (33, 44)).save(folder / "sub" / "new.jpg", quality=90)
    again, said = _open(folder, tmp_path / "run")
    assert len(said) == 1 and "1 changed, 1 vanished, 1 new" in said[0] and "03.jpg changed" in said[0], said
    assert again.cache.filled() == len(again) - 3  # the changed, the new and the broken file are not cached
    reference = _batches(open_images(folder, LOAD))
    _assert_same_batches(_batches(again), reference)
    index = json.loads((again.cache.folder / "index.json").read_text())
    assert {e[0] for e in index["entries"]} == {os.path.relpath(p, folder) for p in again.paths} - {"sub/broken.jpg"} \
        | {"sub/broken.jpg"} & {e[0] for e in index["entries"]}
    assert index["channels"] == 3 and index["dtype"] == "uint8" and index["load_size"] == [LOAD, LOAD]


def test_shared_dir_serves_two_runs_and_overwrite_never_removes_it(folder, tmp_path):
    shared = tmp_path / "shared"
    first, _ = _open(folder, tmp_path / "run1", cache=shared)
    _batches(first, epochs=(0,))
    first.close()
    second, said = _open(folder, tmp_path / "run2", cache=shared)
    assert f"{len(second) - 1} of {len(second)} images cached" in said[0] and str(shared) in said[0], said
    second.close()
    other_size = attach_cache(open_images(folder, LOAD + 4), shared, tmp_path / "run3", say=lambda line: None)
    assert other_size.cache.folder != second.cache.folder  # another load size, another record file
    other_size.close()
    assert remove_run_cache(tmp_path / "run2") == []
    assert (second.cache.folder / RECORDS).exists()
    own, _ = _open(folder, tmp_path / "run4")
    own.close()
    assert remove_run_cache(tmp_path / "run4") == [own.cache.folder]
    assert not (tmp_path / "run4" / "cache").exists()


def test_auto_needs_room_and_an_explicit_dir_says_what_is_wrong(folder, tmp_path, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: Usage())
    plain, said = _open(folder, tmp_path / "run")
    assert isinstance(plain, ImageFiles), said
    assert said[0].startswith("cache: off: the decoded images need") and "more than half" in said[0], said
    with pytest.raises(CacheError, match=r"needs .* more in .*, which has 1000 B|needs"):
        _open(folder, tmp_path / "run", cache=tmp_path / "dir")
    monkeypatch.undo()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CacheError) as error:
        _open(folder, tmp_path / "run", cache=blocker / "cache")
    assert "\n" not in str(error.value) and "--cache off" in str(error.value)


def test_a_cache_in_use_by_another_run_is_left_alone(folder, tmp_path, monkeypatch):
    cached, _ = _open(folder, tmp_path / "run")
    lock = cached.cache.folder / "lock"
    cached.close()
    code = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0)\nos.pwrite(fd, b'4242\\n', 0)\nprint('held', flush=True)\ntime.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and "held" in holder.stdout.readline()
        monkeypatch.setattr(cache_store, "LOCK_WAIT_S", 0.3)
        plain, said = _open(folder, tmp_path / "run")
        assert isinstance(plain, ImageFiles) and "in use by another run (process 4242)" in said[0], said
    finally:
        holder.kill()
        holder.wait()


def test_torchrun_followers_attach_to_their_machines_leader(folder, tmp_path):
    decisions = []
    leader = attach_cache(open_images(folder, LOAD), "auto", tmp_path / "run", leader=True,
                          gather=lambda obj: decisions.append(obj) or [obj], say=lambda line: None)
    follower = attach_cache(open_images(folder, LOAD), "auto", tmp_path / "run", leader=False,
                            gather=lambda obj: decisions + [obj], say=lambda line: None)
    assert isinstance(follower, CachedImages) and follower.cache.folder == leader.cache.folder
    follower[2]  # a follower writes the records it decodes
    assert leader.cache.marked(np.asarray([int(leader.cache.slot_of[2])]))[0]
    assert torch.equal(leader[2][0], read_image(leader.paths[2], LOAD))
    # a follower of a leader that uses no cache uses none either (never a stale one)
    off = attach_cache(open_images(folder, LOAD), "auto", tmp_path / "run", leader=False,
                       gather=lambda obj: [[None, True, None, None], obj], say=lambda line: None)
    assert isinstance(off, ImageFiles)


def test_index_layout_is_generic_in_dtype_and_channels(tmp_path):
    """Records of another dtype and channel count (16-bit, multi-band) round-trip exactly."""
    data = tmp_path / "d"
    data.mkdir()
    paths = []
    for i in range(3):
        (data / f"{i}.bin").write_bytes(bytes([i]))
        paths.append(str(data / f"{i}.bin"))
    layout = cache_store.CacheLayout(5, 3, 4, "uint16")
    cache, report = ImageCache.open(tmp_path / "c", paths, str(data), layout, (3, 4))
    values = [np.random.default_rng(i).integers(0, 65536, (5, 3, 4)).astype(np.uint16) for i in range(3)]
    for i, v in enumerate(values):
        cache.write(int(cache.slot_of[i]), v)
    out = np.empty((3, 5, 3, 4), dtype=np.uint16)
    cache.read_into(cache.slot_of[[2, 0, 1]], out)
    assert all(np.array_equal(out[k], values[j]) for k, j in enumerate((2, 0, 1)))
    cache.close()
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert (index["channels"], index["dtype"], index["record_bytes"]) == (5, "uint16", 5 * 3 * 4 * 2)


# ----------------------------------------------------------------------------- in pretrain
RUN = dict(image_size=16, batch_size=2, projection_size=32, projection_hidden_size=64, workers=0, progress=False,
           steps=6, checkpoint_every=3, log_every=1)  # 12 files, 11 readable: the first epoch is steps 1-6


def _losses(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.usefixtures("one_thread")
def test_pretrain_killed_mid_first_epoch_resumes_exactly_as_an_uncached_run(folder, tmp_path, monkeypatch, capsys):
    """Losses of: one uninterrupted run without the cache == a cached run stopped at step 5 (mid first epoch,
    after the step-3 checkpoint, the cache's last records never synced: as after kill -9), then resumed."""
    pytest.importorskip("tqdm")
    from byol_wrap.job import run, train

    pretrain = train.pretrain
    reference = _losses(tmp_path / "plain") if pretrain(folder, out=tmp_path / "plain", cache="off", **RUN) else {}
    assert not (tmp_path / "plain" / "cache").exists()

    real_step = run.Run._train_step

    def dying_step(self, images):
        if self.step == 5:
            raise KeyboardInterrupt("killed")
        return real_step(self, images)

    monkeypatch.setattr(run.Run, "_train_step", dying_step)
    monkeypatch.setattr(CachedImages, "close", lambda self: os.close(self.cache._lock_fd))  # no sync: a kill
    with pytest.raises(KeyboardInterrupt):
        pretrain(folder, out=tmp_path / "cached", **RUN)
    monkeypatch.undo()
    capsys.readouterr()
    pretrain(folder, out=tmp_path / "cached", **RUN)
    said = capsys.readouterr().out
    assert "written after the last sync (a killed run)" in said and "resuming from step 3" in said, said
    resumed = _losses(tmp_path / "cached")
    assert sorted(resumed) == sorted(reference) == list(range(1, 7))
    assert [resumed[s] for s in range(1, 7)] == [reference[s] for s in range(1, 7)], (resumed, reference)
    again = attach_cache(open_images(folder, 18), "auto", tmp_path / "cached", say=lambda line: None)
    assert again.cache.filled() == len(again) - 1  # the run ended after its first epoch: every readable image


@pytest.mark.usefixtures("one_thread")
def test_pretrain_cache_line_overwrite_and_dir_errors(folder, tmp_path, capsys):
    pytest.importorskip("tqdm")
    from byol_wrap.job.checkpoint import RunError
    from byol_wrap.job.train import pretrain

    run = dict(RUN, steps=2, checkpoint_every=2, progress=True)
    shared = tmp_path / "shared"
    pretrain(folder, out=tmp_path / "a", cache=shared, **run)
    said = capsys.readouterr().out
    assert "cache: " in said and str(shared) in said and "new: the first epoch decodes" in said, said
    pretrain(folder, out=tmp_path / "a", cache=shared, overwrite=True, **run)
    said = capsys.readouterr().out
    assert "images cached" in said and "removed the run's own cache" not in said, said  # DIR kept
    pretrain(folder, out=tmp_path / "b", **run)
    assert (tmp_path / "b" / "cache").is_dir()
    capsys.readouterr()
    pretrain(folder, out=tmp_path / "b", overwrite=True, **run)
    said = capsys.readouterr().out
    assert "removed the run's own cache" in said and "new: the first epoch decodes" in said, said
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunError, match="cannot write the image cache") as error:
        pretrain(folder, out=tmp_path / "c", cache=blocker / "x", **run)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- benchmarks (smoke)
@pytest.mark.usefixtures("one_thread")
def test_loader_and_gpu_benchmarks_run_their_cache_rows(tmp_path, folder):
    from benchmarks import gpu, loader

    payload = loader.main([str(folder), "--quick", "--out", str(tmp_path / "loader.json")])
    rows = payload["results"]["32px/0w"]
    assert all(len(rows[k]) == 1 and rows[k][0] > 0 for k in ("decode", "first", "cached", "memmap")), rows
    assert "cached / memmap" in payload["table"] and str(folder) in payload["source"]
    result = gpu.main(["--tiny", "--device", "cpu", "--rows", "jpeg-loader", "cached-loader", "--no-compile",
                       "--out", str(tmp_path / "gpu.json")])["results"]
    for key in ("jpeg-loader", "cached-loader"):
        assert result[key]["images_per_s"] > 0 and 0 <= result[key]["data_wait_share"] <= 1, result[key]
    assert result["cached-loader"]["cache_fill_s"] is not None


def test_torchrun_two_processes_share_one_cache_and_match_an_uncached_run(folder, tmp_path):
    """``torchrun --nproc_per_node=2`` (gloo, CPU): rank 0 prepares the cache, both ranks write the records of
    their shards and read every record; 3 epochs give the losses of the same command with ``--cache off``."""
    pytest.importorskip("tqdm")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                "byol_wrap", "pretrain", str(folder), "--out", str(out), "--image-size", "16", "--batch-size", "2",
                "--steps", "6", "--log-every", "1", "--projection-size", "32", "--projection-hidden-size", "64",
                "--workers", "0", "--no-progress", *extra]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    cached = run(tmp_path / "cached")
    assert cached.stdout.count("cache: ") == 1 and "new: the first epoch decodes" in cached.stdout, cached.stdout
    run(tmp_path / "plain", "--cache", "off")
    assert _losses(tmp_path / "cached") == _losses(tmp_path / "plain") and len(_losses(tmp_path / "plain")) == 6
    again = attach_cache(open_images(folder, 18), "auto", tmp_path / "cached", say=lambda line: None)
    assert again.cache.filled() == len(again) - 1  # both ranks' records, the broken file never
