from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from reproduce.bench_train import PHASES, spread, step_breakdown, train_cost

SPREAD = ("", "_min", "_q1", "_q3", "_max")  # the columns `spread` writes for a timing: median first


def _ordered(row, name: str) -> bool:
    """min <= q1 <= median <= q3 <= max of timing `name` in a recorded row."""
    return (row[f"{name}_min"] <= row[f"{name}_q1"] <= row[name] <= row[f"{name}_q3"] <= row[f"{name}_max"])


def test_spread_is_median_quartiles_and_range_and_a_single_value_has_none():
    s = spread("t", [3.0, 1.0, 2.0, 10.0])
    assert s == {"t": 2.5, "t_min": 1.0, "t_q1": 1.75, "t_q3": 4.75, "t_max": 10.0} and _ordered(s, "t")
    assert spread("t", [1.0, 2.0])["t_q1"] >= 1.0  # inclusive quartiles: never outside the range
    assert set(spread("t", [0.7]).values()) == {0.7}
    with pytest.raises(ValueError, match="no measurements"):
        spread("t", [])


def test_step_breakdown_reports_every_phase_with_its_spread():
    rows = step_breakdown("lenet300", ["dense", "bc_gnj"], batch_size=8, repeats=2)
    assert [r["method"] for r in rows] == ["dense", "bc_gnj"]
    assert all(r[k] > 0 for r in rows for k in ("forward_ms", "forward_backward_ms", "optimizer_ms"))
    assert rows[0]["penalty_fwd_bwd_ms"] >= 0
    assert all(_ordered(r, f"{p}_ms") for r in rows for p in PHASES) and rows[0]["calls"] == 2
    # the noise one BC step draws: a z per example and input unit, an ε per example and output unit
    assert [r["gaussians"] for r in rows] == [0, 8 * (784 + 300 + 100) + 8 * (300 + 100 + 10)]


def test_train_cost_is_relative_to_the_first_method(mnist):
    rows = train_cost(mnist, "lenet300", ["dense", "bc_ghs"], repeats=1, train_subset=256)
    assert rows[0]["ratio_to_dense"] == 1.0 and rows[1]["epoch_seconds"] > 0
    one = [rows[1]["epoch_seconds" + k] for k in SPREAD]  # one repeat: its one value, no spread
    assert len(set(one)) == 1 and rows[1]["repeats"] == 1 and rows[1]["train_images"] == 256


def test_bench_train_records_medians_spread_and_the_cpu_capability(tmp_path, data_dir):
    from reproduce.__main__ import main

    out = tmp_path / "r" / "bench" / "cpu"
    assert main(["bench-train", "--results-dir", str(tmp_path / "r"), "--data-dir", str(data_dir),
                 "--methods", "dense,bc_gnj", "--repeats", "2", "--train-subset", "256", "--threads", "1"]) == 0
    epochs = pd.read_csv(out / "train_lenet300.csv")
    assert list(epochs.columns) == ["model", "method", *(f"epoch_seconds{k}" for k in SPREAD), "ratio_to_dense",
                                    "repeats", "threads", "batch_size", "train_images"]
    assert list(epochs["method"]) == ["dense", "bc_gnj"] and epochs["ratio_to_dense"].iloc[0] == 1.0
    assert (epochs["repeats"] == 2).all() and (epochs["threads"] == 1).all()
    assert all(_ordered(r, "epoch_seconds") for _, r in epochs.iterrows())
    steps = pd.read_csv(out / "train_lenet300_steps.csv")
    assert list(steps.columns) == ["model", "method", "step_mflop", "gaussians",
                                   *(f"{p}_ms{k}" for p in PHASES for k in SPREAD),
                                   "calls", "threads", "batch_size"]
    assert all(_ordered(r, f"{p}_ms") for _, r in steps.iterrows() for p in PHASES)
    meta = json.loads((out / "train_lenet300_meta.json").read_text())
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {"cpu_model", "cpu_count", "cpu_env", "torch", "git_commit", "finished"} <= set(meta)
    assert meta["args"]["methods"] == "dense,bc_gnj" and meta["args"]["repeats"] == 2
    ops = pd.read_csv(out / "train_lenet300_ops.csv", index_col="operator")
    assert list(ops.columns) == ["dense", "bc_gnj"]
    kinds = ops.loc[["(products)", "(sampling)", "(optimizer)", "(rest)"]]
    assert kinds.sum().to_numpy() == pytest.approx(ops.loc["(total)"].to_numpy())  # the kinds add up to the step
    assert ops.loc["(sampling)", "dense"] == 0 < ops.loc["(sampling)", "bc_gnj"]  # only BC draws noise
    assert (ops.loc["(products)"] > 0).all() and ops.loc["aten::normal_", "bc_gnj"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["train_lenet300.csv", "train_lenet300_meta.json",
                                                    "train_lenet300_ops.csv", "train_lenet300_steps.csv"]  # no temporary file left


def test_an_interrupted_bench_train_leaves_the_recorded_files_as_they_were(tmp_path, data_dir, monkeypatch):
    import reproduce.bench_train
    from reproduce.__main__ import main

    out = tmp_path / "bench" / "cpu"
    out.mkdir(parents=True)
    (out / "train_lenet300.csv").write_text("the previous bench\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce.bench_train, "step_breakdown", interrupted)  # after the epochs are timed
    assert main(["bench-train", "--results-dir", str(tmp_path), "--data-dir", str(data_dir),
                 "--methods", "dense", "--repeats", "1", "--train-subset", "128", "--threads", "1"]) == 130
    assert [p.name for p in out.iterdir()] == ["train_lenet300.csv"]
    assert (out / "train_lenet300.csv").read_text() == "the previous bench\n"


def test_bench_train_names_an_unknown_method(tmp_path, capsys):
    from reproduce.__main__ import main

    assert main(["bench-train", "--results-dir", str(tmp_path), "--methods", "dense,bc_gnx"]) == 2
    assert "no method 'bc_gnx'" in capsys.readouterr().err and not (tmp_path / "bench").exists()


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
    assert all(_ordered(r, "epoch_seconds") for _, r in train.iterrows()) and (train["repeats"] == 2).all()
    meta = json.loads((tmp_path / "r" / "bench" / "cpu" / "meta.json").read_text())
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    text = (tmp_path / "f" / "table2.md").read_text()
    assert f"CPU capability {meta['cpu_capability']}" in text and "epoch_seconds range" in text
    assert any("BC-GHS" in line and "structured" in line for line in text.splitlines()) and "Training cost" in text
    assert (tmp_path / "f" / "table2_speedup.png").exists()


def test_table2_renders_a_bench_recorded_before_the_capability_and_spread(tmp_path):
    from reproduce.table2 import render
    from tests.conftest import REPO

    old = tmp_path / "r" / "bench" / "cpu"
    old.mkdir(parents=True)
    (old / "inference.csv").write_text((REPO / "results" / "bench" / "cpu" / "inference.csv").read_text())
    meta = json.loads((REPO / "results" / "bench" / "cpu" / "meta.json").read_text())
    meta.pop("cpu_capability", None)  # as meta.json was written before it recorded the capability
    (old / "meta.json").write_text(json.dumps(meta))
    (old / "training.csv").write_text("model,method,epoch_seconds,ratio_to_dense,threads,batch_size,peak_mb,"
                                      "train_images\nlenet300,dense,1.19,1.0,2,128,15.1,55000\n")
    text = render(tmp_path / "r", tmp_path / "f")
    assert "capability not recorded" in text and "recorded without its spread" in text
    assert "epoch_seconds range" not in text
