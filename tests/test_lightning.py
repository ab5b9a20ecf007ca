"""examples/scaleout/lightning_byol.py with a CPU Trainer: EMA timing under gradient accumulation, checkpoints."""
import math
import os

import pytest
import torch

L = pytest.importorskip("lightning", reason="pip install lightning (in the [test] extra)")

import lightning_byol  # noqa: E402 - examples/scaleout, on pytest's pythonpath; needs lightning
from helpers import assert_close_scaled  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*(num_workers|does not have many workers|LeafSpec).*"),
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended"),
]

pytestmark.append(pytest.mark.usefixtures("one_thread"))

TINY = ["--synthetic", "48", "--arch", "tiny", "--image-size", "16", "--batch-size", "4",
        "--projection-hidden-size", "32", "--projection-size", "16", "--accelerator", "cpu", "--base-lr", "1.0"]


def paper_tau(k, total, base=0.996):
    return 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2


class RecordOptimizerSteps(L.Callback):
    """Snapshots of the online weights right after each optimizer step (before the EMA)."""

    def __init__(self):
        self.snapshots, self.batches = [], 0
        self.initial_target = None

    def on_train_start(self, trainer, module):
        learner = module.learner
        self.initial_target = [p.detach().clone() for p in learner.target_parameters()]
        trainer.optimizers[0].register_step_post_hook(
            lambda *_: self.snapshots.append([p.detach().clone() for p in learner.online_parameters()])
        )

    def on_train_batch_end(self, *args):
        self.batches += 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    record = RecordOptimizerSteps()
    # 12 batches per epoch, 2 per optimizer step, stop after 3 optimizer steps
    trainer, module = lightning_byol.main(TINY + ["--accumulate", "2", "--max-steps", "3"], callbacks=[record])
    path = os.path.join(tmp_path_factory.mktemp("lightning"), "byol.ckpt")
    trainer.save_checkpoint(path)
    return trainer, module, record, path


def test_ema_once_per_optimizer_step_under_accumulation(trained):
    trainer, module, record, _ = trained
    learner = module.learner
    assert record.batches == 6 and len(record.snapshots) == 3 and trainer.global_step == 3
    assert learner.ema_step == 3
    # the target, recomputed by hand from the online weights after each optimizer step
    expected = record.initial_target
    for k, online in enumerate(record.snapshots):
        tau = paper_tau(k, total=3)
        expected = [tau * t + (1 - tau) * o for t, o in zip(expected, online)]
    for got, want in zip(learner.target_parameters(), expected):
        assert_close_scaled(got, want, rtol=1e-6)
    # and the online network did move (the optimizer ran)
    assert not torch.equal(record.snapshots[0][0], record.snapshots[-1][0])


def test_checkpoint_restores_target_and_tau_step(trained):
    _, module, _, path = trained
    torch.manual_seed(123)  # a fresh module starts from other weights
    restored = lightning_byol.LitBYOL.load_from_checkpoint(path)
    assert restored.learner.ema_step == 3
    assert restored.learner.tau == pytest.approx(paper_tau(3, total=3))
    for got, want in zip(restored.learner.target_parameters(), module.learner.target_parameters()):
        assert torch.equal(got, want)
    assert not torch.equal(restored.learner.net.features[0].weight, lightning_byol.LitBYOL(
        **restored.hparams).learner.net.features[0].weight)


def test_resume_continues_the_step_count(trained):
    _, _, _, path = trained
    record = RecordOptimizerSteps()
    # the run was planned for 3 steps; resuming with --max-steps 4 runs one more
    resume = ["--accumulate", "2", "--max-steps", "4", "--epochs", "2", "--resume", path]
    trainer, module = lightning_byol.main(TINY + resume, callbacks=[record])
    assert trainer.global_step == 4 and module.learner.ema_step == 4 and len(record.snapshots) == 1
    # the target continued from the checkpoint's target with tau of step 3 (of a 4-step plan)
    restored = torch.load(path, weights_only=False)["state_dict"]
    start = [restored[f"learner.{name}"] for name, _ in module.learner.named_parameters() if name.startswith("target_")]
    tau = paper_tau(3, total=4)
    for got, t, o in zip(module.learner.target_parameters(), start, record.snapshots[0]):
        assert_close_scaled(got, tau * t + (1 - tau) * o, rtol=1e-6)


def test_lightning_module_tells_ddp_the_unused_parameters():
    module = lightning_byol.LitBYOL(arch="tiny", image_size=16, total_steps=5, projection_size=16,
                                    projection_hidden_size=32)
    module.learner(torch.rand(4, 3, 16, 16)).backward()
    no_grad = sorted(n for n, p in module.named_parameters() if p.requires_grad and p.grad is None)
    assert no_grad == ["learner.net.fc.bias", "learner.net.fc.weight"]
    assert sorted(module._ddp_params_and_buffers_to_ignore) == no_grad
