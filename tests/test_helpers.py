"""The comparison helpers themselves: they pass float noise and catch real differences."""
import pytest
import torch

from helpers import assert_close_scaled, assert_tensors_close


def test_noise_on_an_exact_zero_passes_on_the_model_scale():
    grads = {"weight": torch.tensor([1.5, -0.7]), "bias_before_bn": torch.tensor([0.0])}
    noisy = {"weight": torch.tensor([1.5000001, -0.7]), "bias_before_bn": torch.tensor([1.2e-5])}
    assert_tensors_close(noisy, grads, rtol=1e-4, scale_rtol=1e-5)  # 1.2e-5 < 1e-5 x 1.5


def test_real_differences_fail_and_show_the_numbers():
    with pytest.raises(AssertionError, match=r"bias.*actual 0\.001.*expected 0"):
        assert_tensors_close({"w": torch.tensor([1.0]), "bias": torch.tensor([1e-3])},
                             {"w": torch.tensor([1.0]), "bias": torch.tensor([0.0])}, rtol=1e-4, scale_rtol=1e-5)
    with pytest.raises(AssertionError, match="differ beyond the bound"):
        assert_close_scaled(torch.tensor([2.0, 1.0]), torch.tensor([2.0, 1.001]), rtol=1e-5)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_scaled(torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(AssertionError, match="keys"):
        assert_tensors_close({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
