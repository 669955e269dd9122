"""The check's tolerances come from measured spread over seeds and CPU-kernel settings."""
from __future__ import annotations

import pandas as pd

from reproduce.calibrate import derive
from reproduce.spec import load_suite
from tests.test_reproduce import TINY  # test_subset = 500: the error's floor is 2 images = 0.4 points


def _grid(values: dict[tuple[str, int], dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"kernels": k, "experiment": "lenet300.dense", "seed": s, **m} for (k, s), m in values.items()])


def _suite(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(TINY)
    return load_suite(path)


def test_exact_repeats_get_the_resolution_floor_which_still_catches_a_one_bit_error(tmp_path):
    row = {"error_pct": 10.0, "nonzero_pct": 60.0, "cr_fast": 30.0, "cr_max": 50.0}
    frame = _grid({(k, s): row for k in ("native", "avx2") for s in (0, 1, 2)})
    d = derive(frame, _suite(tmp_path), "quick")["lenet300.dense"]
    assert d["error_pct"] == {**d["error_pct"], "value": 10.0, "tol": 0.4, "kind": "regression"}
    assert d["cr_fast"]["tol"] == 0.3 and "floor" in d["cr_fast"]["basis"]
    # one more bit in every layer of a 9-bit model: CR fast 30 -> 27, far outside 30 +- 0.3
    assert abs(30.0 * 9 / 10 - d["cr_fast"]["value"]) > d["cr_fast"]["tol"]


def test_a_kernel_induced_range_at_any_seed_sets_the_tolerance(tmp_path):
    base = {"error_pct": 10.0, "nonzero_pct": 60.0, "cr_fast": 30.0, "cr_max": 50.0}
    frame = _grid({("native", 0): base, ("avx2", 0): base, ("native", 1): base,
                   ("avx2", 1): {**base, "error_pct": 11.0, "cr_fast": 31.5}})
    d = derive(frame, _suite(tmp_path), "quick")["lenet300.dense"]
    assert d["error_pct"]["value"] == 10.0 and d["error_pct"]["tol"] == 1.0  # seed 1's range, not seed 0's
    assert d["cr_fast"]["tol"] == 1.5 and d["cr_fast"]["kind"] == "regression" and "spread" in d["cr_fast"]["basis"]


def test_a_chaotic_metric_is_checked_for_sanity_only_and_says_why(tmp_path):
    base = {"error_pct": 10.0, "nonzero_pct": 60.0, "cr_fast": 30.0, "cr_max": 50.0}
    frame = _grid({("native", 0): base, ("avx2", 0): {**base, "cr_fast": 60.0}})  # a threshold flipped
    d = derive(frame, _suite(tmp_path), "quick")["lenet300.dense"]["cr_fast"]
    assert d["kind"] == "sanity" and "chaotic" in d["basis"]
    assert d["value"] - d["tol"] <= 0.0 and d["value"] + d["tol"] >= 90.0  # [30 - 30, 60 + 30]
