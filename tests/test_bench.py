from __future__ import annotations

from reproduce.bench_train import step_breakdown, train_cost


def test_step_breakdown_reports_every_phase():
    rows = step_breakdown("lenet300", ["dense", "bc_gnj"], batch_size=8, repeats=2)
    assert [r["method"] for r in rows] == ["dense", "bc_gnj"]
    assert all(r[k] > 0 for r in rows for k in ("forward_ms", "forward_backward_ms", "optimizer_ms"))
    assert rows[0]["penalty_fwd_bwd_ms"] >= 0


def test_train_cost_is_relative_to_the_first_method(mnist):
    rows = train_cost(mnist, "lenet300", ["dense", "bc_ghs"], repeats=1, train_subset=256)
    assert rows[0]["ratio_to_dense"] == 1.0 and rows[1]["epoch_seconds"] > 0


def test_inference_form_folds_the_normalisation_exactly_where_it_can():
    import torch

    from bayescomp.models import Normalize, lenet5_caffe, lenet300, vgg_cifar
    from reproduce.bench_inference import inference_form

    for build, shape, folded in ((lenet300, (1, 28, 28), True), (lenet5_caffe, (1, 28, 28), True),
                                 (vgg_cifar, (3, 32, 32), False)):  # VGG's first conv pads: not exact, kept
        model = build(mean=[0.3] * shape[0], std=[0.2] * shape[0]).eval()
        x = torch.rand(4, *shape)
        fast = inference_form(model)
        with torch.inference_mode():
            assert torch.allclose(fast(x), model(x), atol=1e-4)
        assert any(isinstance(m, Normalize) for m in fast.modules()) is not folded


def test_sparse_variant_computes_the_same_and_counts_only_nonzero_linear_macs():
    import torch

    from bayescomp.metrics import multiply_adds
    from bayescomp.models import lenet300
    from reproduce.bench_inference import sparse_variant

    model = lenet300().eval()
    with torch.no_grad():
        model.fc1.weight[:, ::2] = 0  # half of fc1's weights
    sparse = sparse_variant(model)
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(sparse(x), model(x), atol=1e-5)
    assert multiply_adds(model, (1, 28, 28)) == 266_200
    assert multiply_adds(model, (1, 28, 28), nonzero=True) == 266_200 - 300 * 392


def test_table2_times_recorded_models_and_renders(tmp_path, data_dir, monkeypatch):
    import pandas as pd

    import reproduce.table2
    from reproduce.__main__ import main
    from tests.test_reproduce import BC, TINY

    monkeypatch.setattr(reproduce.table2, "TRAIN_SUBSET", {"lenet300": 256})
    monkeypatch.setattr(reproduce.table2, "train_methods", lambda: ["dense", "bc_ghs"])
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + BC)
    args = ["--spec", str(spec), "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f"),
            "--data-dir", str(data_dir), "--no-progress"]
    assert main(["table1", "--profile", "quick", *args]) == 0
    assert main(["table2", "--profile", "quick", "--threads", "1", *args]) == 0
    inf = pd.read_csv(tmp_path / "r" / "bench" / "cpu" / "inference.csv")
    assert set(inf["variant"]) == {"dense", "structured", "sparse CSR"} and sorted(set(inf["batch"])) == [1, 64, 1024]
    assert (inf[inf["method"] == "dense"]["speedup"] == 1.0).all() and (inf["q1_ms"] <= inf["q3_ms"]).all()
    train = pd.read_csv(tmp_path / "r" / "bench" / "cpu" / "training.csv")
    assert list(train["method"]) == ["dense", "bc_ghs"] and (train["peak_mb"] > 0).all()
    text = (tmp_path / "f" / "table2.md").read_text()
    assert any("BC-GHS" in line and "structured" in line for line in text.splitlines()) and "Training cost" in text
    assert (tmp_path / "f" / "table2_speedup.png").exists()
