"""DistributedDataParallel with 2 CPU processes (gloo on 127.0.0.1), launched by torchrun.

tests/ddp_worker.py runs in both processes and saves what each rank saw; the tests here
compare the ranks with each other and with a one-process computation on the double batch.
"""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.parallel import DataParallel

from byol_wrap import BYOL, ddp_params_to_ignore, unwrap

from helpers import assert_tensors_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


HAVE_LIGHTNING = importlib.util.find_spec("lightning") is not None
PARTS = "example,control,syncbn,onepass" + (",lightning" if HAVE_LIGHTNING else "")


def launch(out, parts=PARTS, device="cpu", nproc=2, timeout=300):
    """Run tests/ddp_worker.py in ``nproc`` processes with torchrun; return what each rank saved."""
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "examples", "scaleout"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a machine with GPUs
        if os.path.exists("/sys/class/net/lo"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "tests", "ddp_worker.py"), "--out", str(out), "--parts", parts]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return [
        {name.split("_rank")[0]: torch.load(os.path.join(out, name), weights_only=False)
         for name in os.listdir(out) if name.endswith(f"_rank{rank}.pt")}
        for rank in range(nproc)
    ]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("ddp"))


@pytest.mark.integration
def test_online_and_target_weights_identical_on_both_ranks(ranks):
    r0, r1 = ranks[0]["example"], ranks[1]["example"]
    assert r0["params"].keys() == r1["params"].keys()
    names = set(r0["params"])
    assert any(n.startswith("target_net.") for n in names) and any(n.startswith("target_projector.") for n in names)
    for name in names:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    # BatchNorm step counters agree too (running statistics are per process on CPU, see docs/scaling-out.md)
    for name, value in r0["buffers"].items():
        if name.endswith("num_batches_tracked"):
            assert torch.equal(value, r1["buffers"][name]), name


@pytest.mark.integration
def test_update_moving_average_through_unwrap_on_every_rank(ranks):
    for rank in ranks:
        example = rank["example"]
        assert example["ema_step"] == 3  # --max-steps 3, one EMA step per optimizer step
        params = example["params"]
        # the target moved towards the online network but is not a copy of it
        online, target = params["net.features.0.weight"], params["target_net.features.0.weight"]
        assert not torch.equal(online, target)


@pytest.mark.integration
def test_no_unused_parameter_error_without_find_unused_parameters(ranks):
    for rank in ranks:
        assert rank["example"]["find_unused_parameters"] is False
        # sync_batchnorm=None on CPU: BatchNorm1d (DDP refuses SyncBatchNorm in a CPU module)
        assert rank["example"]["head_norms"] == ["BatchNorm1d"]
        # the classifier after hidden_layer="pool" is what BYOL never uses
        assert rank["example"]["parameters_to_ignore"] == ["net.fc.bias", "net.fc.weight"]
        # control: the same DDP without the learner's list fails on the second iteration
        assert "finished reduction" in rank["control"]["error"] or "unused" in rank["control"]["error"]


@pytest.mark.integration
def test_syncbatchnorm_is_everywhere(ranks):
    types = ranks[0]["syncbn"]["norm_types"]
    for prefix in ("net.", "target_net.", "projector.", "predictor.", "target_projector."):
        layers = [t for name, t in types.items() if name.startswith(prefix)]
        assert layers and set(layers) == {"SyncBatchNorm"}, (prefix, layers)


@pytest.mark.integration
def test_syncbn_two_ranks_of_b_equal_one_process_of_2b(ranks):
    for rank in ranks:
        assert_matches_one_process(rank["syncbn"])


def assert_matches_one_process(record):
    """Each step's loss and gradients, then (after two SGD + EMA steps) parameters, target and BatchNorm
    running statistics, equal the one-process reference; sums over 2 ranks run in another order."""
    for step in record["steps"]:
        assert step["loss"] == pytest.approx(step["ref_loss"], rel=1e-5)
        assert step["grads"].keys() == step["ref_grads"].keys() and step["grads"]
        assert_tensors_close(step["grads"], step["ref_grads"], rtol=1e-4, scale_rtol=1e-4)
    assert_tensors_close(record["state"], record["ref_state"], rtol=1e-4, scale_rtol=1e-4)


@pytest.mark.integration
def test_one_pass_views_under_ddp_and_syncbn_equal_one_process_per_view(ranks):
    """view_batching="one_pass" on 2 ranks of B (SyncBatchNorm synchronised once per view) against
    one process on the 2B images with one forward per view."""
    for rank in ranks:
        record = rank["onepass"]
        assert set(record["norm_types"].values()) == {"SyncBatchNorm"}
        assert_matches_one_process(record)


@pytest.mark.integration
@pytest.mark.skipif(not HAVE_LIGHTNING, reason="pip install lightning (in the [test] extra)")
def test_lightning_ddp_strategy_without_find_unused_parameters(ranks):
    r0, r1 = ranks[0]["lightning"], ranks[1]["lightning"]
    for rank in (r0, r1):
        assert rank["world_size"] == 2 and rank["wrapper"] == "DistributedDataParallel"
        assert rank["find_unused_parameters"] is False
        assert rank["parameters_to_ignore"] == ["learner.net.fc.bias", "learner.net.fc.weight"]
        assert rank["global_step"] == 2 and rank["ema_step"] == 2
    for name, value in r0["params"].items():
        assert torch.equal(value, r1["params"][name]), name


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the real nn.SyncBatchNorm (CUDA kernels, NCCL) needs 2 GPUs")
def test_syncbn_on_two_gpus_with_nccl(tmp_path):
    ranks = launch(tmp_path, parts="syncbn", device="cuda")
    for rank in ranks:
        for step in rank["syncbn"]["steps"]:
            assert step["loss"] == pytest.approx(step["ref_loss"], rel=1e-4)
            assert_tensors_close(step["grads"], step["ref_grads"], rtol=1e-3, scale_rtol=1e-4)


# ---------------------------------------------------------------- in one process
def small_learner():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return BYOL(net, image_size=8, hidden_layer="3", projection_size=4, projection_hidden_size=8)


def test_unwrap_finds_the_learner_behind_wrappers():
    learner = small_learner()
    assert unwrap(learner) is learner
    assert unwrap(DataParallel(learner)) is learner
    assert unwrap(torch.compile(learner)) is learner  # compiles nothing until called
    assert unwrap(DataParallel(torch.compile(learner))) is learner

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone_learner = learner

    assert unwrap(Holder()) is learner
    with pytest.raises(TypeError, match="no byol_wrap.BYOL"):
        unwrap(nn.Linear(2, 2))
    with pytest.raises(TypeError):
        unwrap(learner.update_moving_average)
    two = nn.ModuleDict({"a": learner, "b": small_learner()})
    with pytest.raises(ValueError, match="2 BYOL learners"):
        unwrap(two)


def test_ddp_params_to_ignore_are_the_params_without_gradient():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.learner = small_learner()

    holder = Holder()
    holder.learner(torch.rand(4, 3, 8, 8)).backward()
    # independent: the trainable parameters that got no gradient from a training step
    no_grad = sorted(n for n, p in holder.named_parameters() if p.requires_grad and p.grad is None)
    assert no_grad == ["learner.net.4.bias", "learner.net.4.weight"]
    assert sorted(ddp_params_to_ignore(holder)) == no_grad
    assert sorted(ddp_params_to_ignore(holder.learner)) == ["net.4.bias", "net.4.weight"]
