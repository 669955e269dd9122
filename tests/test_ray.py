"""The Ray executor on a real local Ray cluster (2 CPUs): same results as the local executor, a
killed worker retried, a failing run reported with its traceback. Run with `tox -e ray`."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from reproduce.__main__ import main
from reproduce.executors import plan_runs
from reproduce.ray_executor import RayExecutor, run_packed
from reproduce.spec import load_suite
from tests.test_reproduce import BC, REPO, TINY

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marks = tmp_path_factory.mktemp("marks")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "TEST_MARKS": str(marks)}})
    yield marks
    ray.shutdown()


def die_on_first_attempt(task, *args):
    """A task function whose first attempt of each run kills its own worker process mid-run."""
    mark = Path(os.environ["TEST_MARKS"]) / f"{task.exp_id}-seed{task.seed}"
    if not mark.exists():
        mark.write_text("attempt 1")
        os.kill(os.getpid(), signal.SIGKILL)
    mark.write_text("attempt 2")
    return run_packed(task, *args)


def always_fails(task, *args):
    raise RuntimeError(f"boom in {task.exp_id}")


def _spec(tmp_path: Path) -> Path:
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + BC)
    return spec


def _run_plan(task_fn, tmp_path: Path, data_dir: Path) -> list:
    """The tiny grid's plan through a RayExecutor with `task_fn` on each worker; its outcomes."""
    spec = _spec(tmp_path)
    suite = load_suite(spec)
    plan = plan_runs(suite, "quick", tmp_path / "r", suite.ids(), gpu=False)
    return RayExecutor(task_fn=task_fn).run(plan, spec, tmp_path / "r", device="cpu", data_dir=str(data_dir),
                                            progress=False)


def _rows(table: Path) -> list[str]:
    return [line for line in table.read_text().splitlines() if line.startswith("| LeNet")]


def test_ray_gives_the_same_results_and_table_as_local(cluster, tmp_path, data_dir):
    spec = _spec(tmp_path)
    common = ["table1", "--profile", "quick", "--spec", str(spec), "--data-dir", str(data_dir), "--no-progress"]
    assert main([*common, "--jobs", "2", "--results-dir", str(tmp_path / "local"), "--figures-dir",
                 str(tmp_path / "fl")]) == 0  # 2 jobs: 1 thread per run, as a Ray task
    assert main([*common, "--executor", "ray", "--results-dir", str(tmp_path / "ray"), "--figures-dir",
                 str(tmp_path / "fr")]) == 0
    for exp_id in ("lenet300.dense", "lenet300.bc_ghs"):
        a, b = (tmp_path / r / exp_id / "quick" / "seed0" for r in ("local", "ray"))
        assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
        ha, hb = (pd.read_csv(d / "history.csv").drop(columns="seconds") for d in (a, b))
        pd.testing.assert_frame_equal(ha, hb)
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert _rows(tmp_path / "fl" / "table1_quick.md") == _rows(tmp_path / "fr" / "table1_quick.md")


def test_a_worker_killed_mid_run_is_retried_and_the_grid_completes(cluster, tmp_path, data_dir):
    outcomes = _run_plan(die_on_first_attempt, tmp_path, data_dir)
    assert [o.error for o in outcomes] == [None, None]
    assert (cluster / "lenet300.dense-seed0").read_text() == "attempt 2"
    assert (tmp_path / "r" / "lenet300.bc_ghs" / "quick" / "seed0" / "metrics.json").exists()


def test_a_run_failing_twice_is_reported_with_its_traceback_and_leaves_nothing(cluster, tmp_path, data_dir):
    outcomes = _run_plan(always_fails, tmp_path, data_dir)
    assert len(outcomes) == 1 and "boom in lenet300.dense" in outcomes[0].error
    assert "test_ray.py\", line" in outcomes[0].error and "in always_fails" in outcomes[0].error  # the traceback
    assert "\x1b[" not in outcomes[0].error
    assert not (tmp_path / "r" / "lenet300.dense").exists()  # and the dependent stage never started
