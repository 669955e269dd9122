from __future__ import annotations

import pytest
import torch

from bayescomp.models import BUILDERS, count_weights, lenet5_caffe, lenet300, load_model, model_record, vgg_cifar


@pytest.mark.parametrize("build, weights", [(lenet300, 266_200), (lenet5_caffe, 430_500), (vgg_cifar, 14_977_728)])
def test_weight_counts_match_the_paper(build, weights):
    assert count_weights(build()) == weights


def test_lenet300_count_with_biases():
    assert count_weights(lenet300(), biases=True) == 266_610


@pytest.mark.parametrize("name, shape", [("lenet300", (1, 28, 28)), ("lenet5_caffe", (1, 28, 28)),
                                          ("vgg_cifar", (3, 32, 32))])
def test_models_map_images_to_ten_logits(name, shape):
    assert BUILDERS[name]().eval()(torch.rand(2, *shape)).shape == (2, 10)


def test_model_record_round_trips_without_code(tmp_path):
    model = lenet5_caffe(widths=(5, 10, 76, 16)).eval()
    path = tmp_path / "model.pt"
    torch.save(model_record(model, "lenet5_caffe", (5, 10, 76, 16)), path)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(load_model(path)(x), model(x))


def test_load_model_rejects_foreign_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a bayescomp-model"):
        load_model(path)
