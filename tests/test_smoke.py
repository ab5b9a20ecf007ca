import torch
import torchvision

from byol_wrap import BYOL


def test_resnet18_training_step_reduces_nothing_silently():
    torch.manual_seed(0)
    learner = BYOL(torchvision.models.resnet18(), image_size=32, hidden_layer="avgpool",
                   projection_hidden_size=64, projection_size=32)
    opt = torch.optim.SGD(learner.parameters(), lr=0.01)
    loss = learner(torch.rand(4, 3, 32, 32))
    assert 0.0 <= loss.item() <= 8.0
    opt.zero_grad(); loss.backward(); opt.step()
    assert learner.update_moving_average() == 0.996
