from __future__ import annotations

from reproduce.bench import step_breakdown, train_cost


def test_step_breakdown_reports_every_phase():
    rows = step_breakdown("lenet300", ["dense", "bc_gnj"], batch_size=8, repeats=2)
    assert [r["method"] for r in rows] == ["dense", "bc_gnj"]
    assert all(r[k] > 0 for r in rows for k in ("forward_ms", "forward_backward_ms", "optimizer_ms"))
    assert rows[0]["penalty_fwd_bwd_ms"] >= 0


def test_train_cost_is_relative_to_the_first_method(mnist):
    rows = train_cost(mnist, "lenet300", ["dense", "bc_ghs"], repeats=1, train_subset=256)
    assert rows[0]["ratio_to_dense"] == 1.0 and rows[1]["epoch_seconds"] > 0
