from __future__ import annotations

import pytest
import torch

from bayescomp.artifact import ArtifactError
from bayescomp.models import MODELS, count_weights, lenet5_caffe, lenet300, load_model, model_record, vgg_cifar


@pytest.mark.parametrize("build, weights", [(lenet300, 266_200), (lenet5_caffe, 430_500), (vgg_cifar, 14_977_728)])
def test_weight_counts_match_the_paper(build, weights):
    assert count_weights(build()) == weights


def test_lenet300_count_with_biases():
    assert count_weights(lenet300(), biases=True) == 266_610


@pytest.mark.parametrize("name, shape", [("lenet300", (1, 28, 28)), ("lenet5_caffe", (1, 28, 28)),
                                          ("vgg_cifar", (3, 32, 32))])
def test_models_map_images_to_ten_logits(name, shape):
    assert MODELS[name]().eval()(torch.rand(2, *shape)).shape == (2, 10)


def test_model_record_round_trips_without_code(tmp_path):
    model = lenet5_caffe(widths=(5, 10, 76, 16)).eval()
    path = tmp_path / "model.pt"
    torch.save(model_record(model, "lenet5_caffe", (5, 10, 76, 16)), path)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(load_model(path)(x), model(x))


def test_a_record_written_before_the_batch_norm_key_loads_with_batch_norm(tmp_path):
    """model.pt files recorded before BC's VGG lost its batch norm (when every VGG had it) still load."""
    model = vgg_cifar(widths=PRUNED_WIDTHS["vgg_cifar"]).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
    record = model_record(model, "vgg_cifar", PRUNED_WIDTHS["vgg_cifar"])
    assert record.pop("batch_norm") is True
    torch.save(record, tmp_path / "model.pt")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(load_model(tmp_path / "model.pt")(x), model(x))


def test_load_model_rejects_foreign_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a bayescomp-model"):
        load_model(path)


PRUNED_WIDTHS = {"lenet300": (500, 30, 10), "lenet5_caffe": (5, 10, 76, 16), "vgg_cifar": (4,) * 13 + (3, 4)}
IMAGE_SHAPES = {"lenet300": (1, 28, 28), "lenet5_caffe": (1, 28, 28), "vgg_cifar": (3, 32, 32)}


@pytest.mark.parametrize("form", ["dense", "exported"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_image_batches_and_flat_ones_only_if_an_mlp(tmp_path, name, form):
    """An exported (pruned) model behaves as the dense one: a flat batch is read as images by the MLP and
    refused by the conv nets, never broadcast against the normalisation buffers into one row."""
    if form == "dense":
        model = MODELS[name]().eval()
    else:  # pruned widths, with InputSelect, saved and reloaded as a results folder's model.pt
        path = tmp_path / "model.pt"
        torch.save(model_record(MODELS[name](widths=PRUNED_WIDTHS[name]), name, PRUNED_WIDTHS[name]), path)
        model = load_model(path)
    c, h, w = IMAGE_SHAPES[name]
    images = torch.rand(3, c, h, w)
    assert model(images).shape == (3, 10)
    if name == "lenet300":
        torch.testing.assert_close(model(images.flatten(1)), model(images))
    else:
        with pytest.raises(ValueError, match=f"takes images of shape \\(N, {c}, {h}, {w}\\), got a tensor of shape "
                                             f"\\(3, {c * h * w}\\); reshape it with x.view\\(-1, {c}, {h}, {w}\\)"):
            model(images.flatten(1))
    for wrong in (images[0], torch.rand(3, c + 1, h, w), torch.rand(3, c, h, w + 1), torch.rand(3, c * h * w + 1)):
        with pytest.raises(ValueError, match=f"takes images of shape \\(N, {c}, {h}, {w}\\).*got a tensor of shape"):
            model(wrong)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran on load",))


def test_load_model_refuses_code_and_names_a_damaged_file_without_torchs_advice(tmp_path, capsys):
    code, empty = tmp_path / "code.pt", tmp_path / "empty.pt"
    torch.save({"format": "bayescomp-model/1", "x": _RunsCode()}, code)
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match="code.pt was refused and not loaded: loading it would run code") as e:
        load_model(code)
    assert "weights_only" not in str(e.value) and "this ran on load" not in capsys.readouterr().out
    with pytest.raises(ArtifactError, match="empty.pt is empty, truncated or corrupt \\(EOFError\\); delete it"):
        load_model(empty)
