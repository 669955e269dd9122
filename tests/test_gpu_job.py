"""The GPU job (reproduce/gpu_job.py): its plan and, slow, its CPU dress rehearsal end to end."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile

import pytest

from reproduce import gpu_job
from reproduce.__main__ import main as reproduce_main

REPO = gpu_job.REPO


def _projection(profile: str, mandatory_s: float) -> dict:
    return {"profile": profile, "mandatory_s": mandatory_s, "rows": {}, "stages": {}}


@pytest.mark.parametrize("full_s, tier, chosen", [(100.0, "auto", "paper"), (400.0, "auto", "gpu_short"),
                                                  (400.0, "full", "paper"), (100.0, "short", "gpu_short")])
def test_the_plan_takes_paper_only_when_its_projection_fits(tmp_path, full_s, tier, chosen):
    """Budget 300 s, 20 s kept for the end, projections x 1.15: paper at 100 s fits, at 400 s it does not
    and the short schedule (its own profile) is chosen; --tier forces either."""
    args = argparse.Namespace(
        out=tmp_path, data=None, budget=300.0, device="cpu", rehearsal=False, tier=tier, work=tmp_path / "w",
        spec=gpu_job.DEFAULT_TOML)
    job = gpu_job.Job(args)
    try:
        assert job.choose(_projection("paper", full_s), _projection("gpu_short", 50.0)) == chosen
    finally:
        job.close()
    record = json.loads((tmp_path / "plan.json").read_text())
    assert record["chosen"] == chosen
    log = (tmp_path / "job.log").read_text()
    assert f"chosen: {chosen}" in log
    if chosen == "gpu_short" and tier == "auto":
        assert "paper would need 400 s" in log


@pytest.mark.slow
def test_rehearsal_runs_every_stage_and_its_results_render_in_table1(tmp_path, data_dir):
    """The GPU job's command at tiny size on the CPU: every stage in the log, at most 8 output files of
    at most 16 MiB (what the device tool returns), and Table 1 renders the VGG rows from results.tar.gz."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "reproduce.gpu_job", "--data", str(data_dir), "--out", str(out),
                           "--budget", "400", "--rehearsal", "--work", str(tmp_path / "work")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (out / "job.log").read_text()
    for stage in ("stage 0:", "stage 1: probe", "stage 2: plan", "stage 3.1:", "stage 3.2:", "stage 4.1:",
                  "stage 4.2:", "stage 4.3:", "stage 4.4:", "stage 5:", "chosen: rehearsal"):
        assert stage in log, stage
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.stat().st_size < 16 * 2**20 for f in files)
    results = tmp_path / "back"
    with tarfile.open(out / "results.tar.gz") as tar:
        tar.extractall(results, filter="data")
    assert reproduce_main(["table1", "--profile", "rehearsal", "--results-dir", str(results), "--figures-dir",
                           str(tmp_path / "fig"), "--no-train", "--no-progress"]) == 0
    table = (tmp_path / "fig" / "table1_rehearsal.md").read_text()
    vgg = [line for line in table.splitlines() if line.startswith("| VGG")]
    assert len(vgg) == 6 and all("not run" not in line for line in vgg)
    plan = json.loads((out / "plan.json").read_text())
    assert all(r["status"] in ("recorded", "current") for r in plan["rows"].values())
