"""The API's data errors name what the user handed in (issue 19, item 7)."""

import logging

import pytest
import torch

import apib_kernels as ak
from apib.models import get_model
from apib.pruning import prune

# --- Data errors of the pruning API ------------------------------------------------------------------


def test_an_empty_calibration_loader_is_named():
    with pytest.raises(ValueError, match="calib_loader yielded no batch"):
        prune(get_model("resnet20"), [], flops_reduction=0.5, progress=False)


def test_calibration_batches_of_different_image_sizes_are_named():
    batches = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 28, 28)]
    with pytest.raises(ValueError, match=r"same image size: batch 1 has \(3, 28, 28\).*\(3, 32, 32\)"):
        prune(get_model("resnet20"), batches, flops_reduction=0.5, calib_size=None, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_images_are_named(bad):
    images = torch.randn(8, 3, 32, 32)
    images[5, 1, 2, 3] = bad
    batches = [(images[:4], torch.zeros(4)), (images[4:], torch.zeros(4))]
    with pytest.raises(ValueError, match=r"calibration images contain NaN or infinite values \(batch 1"):
        prune(get_model("resnet20"), batches, flops_reduction=0.5, progress=False)


def test_hsic_lasso_says_which_input_is_constant(caplog):
    x, y = torch.randn(16, 5, 3, 3, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    with caplog.at_level(logging.WARNING):
        ak.hsic_lasso(x.new_ones(x.shape), y, n_select=2, backend="torch")
    assert "every channel of x is constant" in caplog.text and "y constant" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ak.hsic_lasso(x, y.new_ones(y.shape), n_select=2, backend="torch")
    assert "is y constant?" in caplog.text
