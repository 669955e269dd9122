"""The GPU job: every run that needs a GPU, in one command that fits a fixed time budget (issue 15).

    PYTHONPATH=. python3 -m reproduce.gpu_job --data DIR --out OUT [--budget 540] [--rehearsal]

Stages, each announced in the log: (0) environment and data; (1) probe: two short epochs of every
VGG method on a few batches, timed on the device (the second epoch: warm), and the checkpoint write
speed; (2) plan: the projected time of every stage at the full schedule (`paper`) and the short one
(`gpu_short`), printed before anything is trained, and the schedule chosen: `paper` only if the
mandatory rows fit the time left with a margin (SAFETY), else `gpu_short`, whose rows are recorded
under that profile, never as `paper`; (3) mandatory rows: vgg_cifar.dense, then vgg_cifar.bc_gnj
and vgg_cifar.bc_ghs side by side; (4) optional stages, each only if its projection fits what is
left: the VGG baselines, Table 2 on this device, the LeNet-5-Caffe BC rows (`paper`; skipped when
already recorded); (5) Table 1 of the chosen profile, rendered from the results.

Each run is `python -m reproduce run` in a child process with `--stop-at` set so that it stops at an
epoch boundary early enough to compress and record before the budget ends (bayescomp.train's
deadline); it leaves its resume point in the work folder. As each run ends, the output folder gets:
  job.log          everything the job and its runs printed, line by line as it happens
  plan.json        probe timings, projections, the chosen schedule, and every run's outcome
  results.tar.gz   the finished runs' results folders as `reproduce run` writes them, relative to
                   results/ (`tar -xzf results.tar.gz -C results/`), without *.large.pt; bench/<device>/
                   of Table 2; the resume points of paused runs that are small enough to come back
  table1.md, table2.md   rendered at the end
so a job killed at its limit has returned every finished result and its log. These are at most 8
files of at most 16 MiB each, what the device tool brings back (`MAX_RETURN_BYTES`).
--rehearsal runs the same stages on a CPU at tiny size (profiles `rehearsal`, `rehearsal_short`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable, TextIO

import torch

from bayescomp.bc import bayes_layers
from bayescomp.data import DataError, ImageData, load_dataset
from bayescomp.metrics import error_pct
from bayescomp.models import MODELS
from bayescomp.train import fit
from reproduce.registry import METHODS
from reproduce.results import (atomic_path, bench_dir, checkpoint_path, git, profile_suffix, result_dir, status,
                               write_atomic)
from reproduce.run import resolve_device
from reproduce.spec import DEFAULT_TOML, SpecError, Suite, load_suite

REPO = Path(__file__).resolve().parent.parent
MANDATORY = (("vgg_cifar.dense",), ("vgg_cifar.bc_gnj", "vgg_cifar.bc_ghs"))  # stages in order; rows side by side
VGG_OPTIONAL = (("vgg_cifar.magnitude", "vgg_cifar.deep_compression"), ("vgg_cifar.sparse_vd",))
LENET_ROWS = ("lenet5_caffe.bc_gnj", "lenet5_caffe.bc_ghs")
BC_METHODS = ("bc_gnj", "bc_ghs")  # their compress searches thresholds on the validation split
SAFETY = 1.15  # projections are multiplied by this before they are compared with the time left
END_S = 20.0  # the budget's last seconds: runs still going are killed, Table 1 rendered, results packed
MAX_RETURN_BYTES = 15 * 2**20  # the device tool returns files up to 16 MiB
SEED = 0


@dataclass(frozen=True)
class Mode:
    """Profiles and sizes of a job: on the GPU, or its CPU dress rehearsal at tiny size."""

    full: str  # profile of the full schedule
    short: str  # the shorter schedule, used when the full one does not fit
    lenet: str  # profile of the LeNet-5-Caffe BC rows
    probe_batches: int  # training batches per probe epoch
    probe_eval: int  # images of the probe's evaluation timing
    startup_s: float  # one run's start: interpreter, torch, device, data from the cache, pretrained model
    post_s: float  # one run's compress + measure beside the threshold search (the weight encoder alone takes
    #                about 12 s on one core of the 2-core CPU for VGG's 15 M weights)
    table2_s: float  # Table 2 (estimate; it is not probed)
    lenet_s: float  # the LeNet-5-Caffe stage when its rows are not recorded yet (estimate; not probed)
    threads: int | None  # torch threads of the job and each run (None: torch's default)


GPU = Mode("paper", "gpu_short", "paper", probe_batches=40, probe_eval=1000, startup_s=25.0, post_s=45.0,
           table2_s=180.0, lenet_s=150.0, threads=None)
# a shared 2-core CPU: one thread per process (two runs side by side; more threads than free cores
# made a BC step ten times slower in a trial)
REHEARSAL = Mode("rehearsal", "rehearsal_short", "rehearsal", probe_batches=2, probe_eval=200, startup_s=10.0,
                 post_s=10.0, table2_s=90.0, lenet_s=60.0, threads=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce.gpu_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (the device tool's $OUT)")
    parser.add_argument("--data", default=os.environ.get("BAYESCOMP_DATA"),
                        help="folder with CIFAR10/ (and MNIST/raw for the LeNet rows and Table 2); default $BAYESCOMP_DATA")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds the whole job may take (default 540)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --rehearsal")
    parser.add_argument("--rehearsal", action="store_true", help="the CPU dress rehearsal: same stages, tiny sizes")
    parser.add_argument("--tier", choices=("auto", "full", "short"), default="auto",
                        help="schedule of the VGG rows: auto (default: full if its projection fits), full, short")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--spec", type=Path, default=DEFAULT_TOML, help="experiments file (default: the packaged one)")
    args = parser.parse_args(argv)
    for name in ("out", "work", "spec"):  # the runs start in the repository root: pass them absolute paths
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    args.data = str(Path(args.data).resolve()) if args.data else None
    job = Job(args)
    try:
        return job.run()
    except (SpecError, DataError, ValueError) as e:  # bad data folder, no CUDA device, bad experiments file
        job.log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        job.log("interrupted; what has finished is in the output folder")
        return 130
    finally:
        job.close()


class Job:
    """State of one job: its clock, log, output folder, work folder and the record behind plan.json."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.started = time.time()
        self.deadline = self.started + args.budget
        self.args, self.mode = args, REHEARSAL if args.rehearsal else GPU
        self.device = args.device or ("cpu" if args.rehearsal else "cuda")
        if self.mode.threads is not None:
            torch.set_num_threads(self.mode.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        self.out = args.out
        self.work = args.work or Path(tempfile.mkdtemp(prefix="bayescomp-gpu-job-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = self.work / "results"
        self._lock = threading.Lock()
        self._log: TextIO = open(self.out / "job.log", "w", buffering=1)
        self.record: dict[str, Any] = {"command": sys.argv, "budget_s": args.budget, "rows": {}, "stages": []}
        self.unfinished: list[tuple[str, str]] = []  # (experiment, profile) of runs paused or killed
        self.bench: Path | None = None  # Table 2's measurements, once written
        self.post_s: dict[tuple[str, str], float] = {}  # projected compress + measure of (experiment, profile)

    # ---- log and record
    def log(self, msg: str) -> None:
        line = f"[{time.time() - self.started:6.1f} s] {msg}"
        with self._lock:
            print(line, flush=True)
            self._log.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.time()

    def save_record(self) -> None:
        write_atomic(self.out / "plan.json", json.dumps(self.record, indent=2, default=str) + "\n")

    def close(self) -> None:
        self.record["wall_s"] = time.time() - self.started
        self.save_record()
        self.log(f"job ended after {self.record['wall_s']:.0f} s of its {self.args.budget:.0f} s; "
                 f"output: {', '.join(sorted(p.name for p in self.out.iterdir()))}")
        self._log.close()

    # ---- the stages
    def run(self) -> int:
        suite = load_suite(self.args.spec)
        data = self.environment()
        probes = self.probe(suite, data)
        full, short = self.project(suite, data, probes, self.mode.full), self.project(suite, data, probes, self.mode.short)
        profile = self.choose(full, short)
        ok = True
        for k, rows in enumerate(MANDATORY):
            self.log(f"== stage 3.{k + 1}: {' + '.join(rows)} [{profile}] (mandatory)")
            ok = ok and self.run_stage(suite, rows, profile)  # without the dense model BC cannot start
        for k, rows in enumerate(VGG_OPTIONAL):
            stage = (full if profile == self.mode.full else short)["stages"][" + ".join(rows)]
            dense = status(self.results, suite.resolve(MANDATORY[0][0], profile), SEED) == "current"
            self.optional(f"4.{k + 1}: {' + '.join(rows)} [{profile}]", stage["total_s"] if dense else math.inf,
                          partial(self.run_stage, suite, rows, profile))
        self.optional(f"4.3: Table 2 on {self.device} [{profile}]", self.mode.table2_s,
                      partial(self.table2, profile))
        lenet_due = [r for r in LENET_ROWS if status(self.results, suite.resolve(r, self.mode.lenet), SEED) != "current"]
        self.optional(f"4.4: {' + '.join(LENET_ROWS)} [{self.mode.lenet}]", self.mode.lenet_s if lenet_due else 0.0,
                      partial(self.run_stage, suite, LENET_ROWS, self.mode.lenet))
        self.render_table1(profile)
        return 0 if ok else 1

    def environment(self) -> ImageData:
        self.log(f"== stage 0: environment and data; budget {self.args.budget:.0f} s, ends "
                 f"{datetime.fromtimestamp(self.deadline).isoformat(timespec='seconds')}")
        dev = resolve_device(self.device)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
        env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(dev), "device_name": name,
               "host": platform.node(), "commit": git("rev-parse", "HEAD"), "mode": dataclasses.asdict(self.mode),
               "work": str(self.work)}
        self.record["environment"] = env
        self.log("  " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "mode"))
        self.log(f"  command: {' '.join(sys.argv)}")
        if (REPO / "results").is_dir():  # recorded runs: the LeNet pretrains and rows, Table 2's models
            shutil.copytree(REPO / "results", self.results, ignore=shutil.ignore_patterns(".work", ".tmp-*", "*.lock"),
                            dirs_exist_ok=True)
        t0 = time.time()
        data = load_dataset("cifar10", self.args.data)  # decodes once into the cache the runs then read
        self.log(f"  CIFAR-10 ({data.source}) in memory after {time.time() - t0:.1f} s; work folder {self.work}")
        self.save_record()
        return data

    def probe(self, suite: Suite, data: ImageData) -> dict[str, dict[str, float]]:
        """Seconds per training image (second of two short epochs) and per evaluated image of each VGG row's
        method, bytes of its checkpoint; and the speed of writing a checkpoint to the work folder."""
        self.log(f"== stage 1: probe ({self.mode.probe_batches} training batches x 2 epochs per method, on {self.device})")
        out: dict[str, dict[str, float]] = {}
        no_val = dataclasses.replace(data, val_x=data.val_x[:0], val_y=data.val_y[:0])
        for exp_id in [r for stage in MANDATORY + VGG_OPTIONAL for r in stage]:
            spec = suite.resolve(exp_id, self.mode.full)
            method = METHODS[spec.method](**spec.method_args)
            model = MODELS[spec.model](layers=method.layers(), mean=data.mean, std=data.std, **spec.model_args)
            n = self.mode.probe_batches * spec.train.batch_size
            hist = fit(model, method, no_val, dataclasses.replace(spec.train, epochs=2), seed=SEED, device=self.device,
                       progress=False, train_subset=n, test_subset=64)
            t0 = time.perf_counter()
            error_pct(model, data.val_x[:self.mode.probe_eval], data.val_y[:self.mode.probe_eval], self.device)
            eval_s = (time.perf_counter() - t0) / self.mode.probe_eval
            slots = 2 if spec.train.optimizer == "adam" else 1  # optimiser state per parameter
            params = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            out[exp_id] = {"train_s_per_image": max(hist[1]["seconds"] - 64 * eval_s, 0.0) / n,
                           "eval_s_per_image": eval_s, "checkpoint_bytes": params * (1 + slots),
                           "search_evals": sum(math.ceil(math.log2(max(m.n_groups, 2))) for _, m in bayes_layers(model)) + 2}
            self.log(f"  {exp_id:<28} {1e3 * out[exp_id]['train_s_per_image'] * spec.train.batch_size:8.2f} ms per "
                     f"training batch of {spec.train.batch_size}, {1e6 * eval_s:7.1f} us per evaluated image "
                     f"(first epoch {hist[0]['seconds']:.1f} s, second {hist[1]['seconds']:.1f} s)")
            del model, method
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
        out["checkpoint_write"] = {"bytes_per_s": _write_speed(self.work, 16 if self.args.rehearsal else 256)}
        self.log(f"  checkpoint writes: {out['checkpoint_write']['bytes_per_s'] / 2**20:.0f} MiB/s")
        self.record["probe"] = out
        self.save_record()
        return out

    def project(self, suite: Suite, data: ImageData, probes: dict[str, dict[str, float]], profile: str) -> dict[str, Any]:
        """Projected seconds of every VGG stage at `profile`: per run, epochs x (training + evaluation of the
        test and validation splits + checkpoint write), then compress and measure (for BC, the validation
        threshold search; for DC, its centroid fine-tuning epochs); a stage's runs share the device, so
        their times add up (no gain assumed). Each run's compress allowance is kept for its deadline."""
        n_total = len(data.train_x) + len(data.val_x)
        rows, stages = {}, {}
        for stage in MANDATORY + VGG_OPTIONAL:
            for exp_id in stage:
                spec, p = suite.resolve(exp_id, profile), probes[exp_id]
                n_train = min(spec.train_subset or n_total, n_total - spec.val_size)
                n_eval = min(spec.test_subset or len(data.test_x), len(data.test_x)) + spec.val_size
                epoch = (n_train * p["train_s_per_image"] + n_eval * p["eval_s_per_image"]
                         + p["checkpoint_bytes"] / probes["checkpoint_write"]["bytes_per_s"])
                search = (p["search_evals"] * spec.val_size * probes["vgg_cifar.dense"]["eval_s_per_image"]
                          if spec.method in BC_METHODS else 0.0)
                tuning = getattr(METHODS[spec.method](**spec.method_args), "centroid_epochs", 0) * epoch
                rows[exp_id] = {"epochs": spec.train.epochs, "epoch_s": epoch, "train_s": spec.train.epochs * epoch,
                                "post_s": self.mode.post_s + search + tuning}
                self.post_s[(exp_id, profile)] = rows[exp_id]["post_s"]
            stages[" + ".join(stage)] = {"total_s": self.mode.startup_s + sum(rows[r]["train_s"] + rows[r]["post_s"]
                                                                             for r in stage)}
        mandatory = sum(stages[" + ".join(s)]["total_s"] for s in MANDATORY)
        return {"profile": profile, "rows": rows, "stages": stages, "mandatory_s": mandatory}

    def choose(self, full: dict[str, Any], short: dict[str, Any]) -> str:
        self.log(f"== stage 2: plan ({self.left():.0f} s left; projections x {SAFETY} must fit in it less "
                 f"the last {END_S:.0f} s)")
        self.log(f"  {'stage':<52} {full['profile'] + ' (full)':>18} {short['profile'] + ' (short)':>22}")
        for name in full["stages"]:
            cols = [f"{p['stages'][name]['total_s']:7.0f} s" + " (" + "/".join(
                str(p["rows"][r]["epochs"]) for r in name.split(" + ")) + " ep)" for p in (full, short)]
            self.log(f"  {name:<52} {cols[0]:>18} {cols[1]:>22}")
        self.log(f"  {'mandatory (the first two stages)':<52} {full['mandatory_s']:9.0f} s {short['mandatory_s']:20.0f} s")
        room = self.left() - END_S
        fits = {p["profile"]: p["mandatory_s"] * SAFETY <= room for p in (full, short)}
        if self.args.tier != "auto":
            chosen = full if self.args.tier == "full" else short
            why = f"--tier {self.args.tier}"
        else:
            chosen = full if fits[full["profile"]] else short
            why = (f"projected {chosen['mandatory_s']:.0f} s x {SAFETY} of {room:.0f} s"
                   + ("" if chosen is full else f"; {full['profile']} would need {full['mandatory_s']:.0f} s"))
        self.log(f"  chosen: {chosen['profile']} ({why})")
        if not fits[chosen["profile"]]:
            self.log(f"  WARNING: {chosen['profile']} is projected past the budget; its runs stop at an epoch "
                     "boundary before the end and leave resume points")
        self.record.update(projections={"full": full, "short": short}, chosen=chosen["profile"], chosen_because=why)
        self.save_record()
        return chosen["profile"]

    def optional(self, title: str, projected_s: float, run: Callable[[], object]) -> None:
        room = self.left() - END_S
        if projected_s * SAFETY > room:
            why = ("the dense model it starts from was not recorded" if math.isinf(projected_s)
                   else f"projected {projected_s:.0f} s x {SAFETY} > {room:.0f} s left")
            self.log(f"== stage {title}: skipped, {why}")
            self.record["stages"].append({"stage": title, "status": "skipped", "projected_s": projected_s})
            self.save_record()
            return
        self.log(f"== stage {title} (optional): projected {projected_s:.0f} s, {room:.0f} s left")
        run()

    # ---- runs
    def run_stage(self, suite: Suite, rows: tuple[str, ...], profile: str) -> bool:
        """The rows side by side, each a `reproduce run` process; True if every row ends recorded."""
        started, children = time.time(), []
        if self.left() - END_S < self.mode.startup_s:
            self.log(f"  not started: {self.left():.0f} s left")
            self.record["stages"].append({"stage": " + ".join(rows), "profile": profile, "status": "not started"})
            return False
        for exp_id in rows:
            spec = suite.resolve(exp_id, profile)
            if status(self.results, spec, SEED) == "current":
                self.log(f"  [{exp_id}] recorded before this job (spec {spec.hash}): nothing to run")
                self.record["rows"][f"{exp_id} [{profile}]"] = {"status": "current"}
                continue
            reserve = self.post_s.get((exp_id, profile), self.mode.post_s)  # the LeNet rows: not probed
            children.append(Child(self, exp_id, profile, spec.train.epochs, stop_at=self.deadline - END_S - reserve))
        ok = True
        while children:
            for child in [c for c in children if c.poll()]:
                children.remove(child)
                ok = self.finished(child) and ok
            if time.time() > self.deadline - END_S:
                for child in children:
                    child.kill()
                    ok = self.finished(child) and False
                break
            time.sleep(0.5)
        self.record["stages"].append({"stage": " + ".join(rows), "profile": profile, "seconds": time.time() - started})
        self.save_record()
        return ok

    def finished(self, child: Child) -> bool:
        code, key = child.proc.returncode, (child.exp_id, child.profile)
        outcome = {0: "recorded", 3: "paused at the deadline (resume point in the work folder)"}.get(
            code, "killed at the end of the budget" if child.killed else f"failed (exit {code})")
        row: dict[str, Any] = {"status": outcome, "exit": code, "seconds": time.time() - child.started,
                               "epochs_seen": child.epochs_seen}
        if code == 0:
            folder = result_dir(self.results, child.exp_id, child.profile, SEED)
            metrics = json.loads((folder / "metrics.json").read_text())
            row["metrics"] = {k: metrics.get(k) for k in ("error_pct", "nonzero_pct", "architecture", "bits",
                                                          "cr_fast", "cr_max")}
        else:  # its last epoch's checkpoint stays in the work folder: the resume point
            self.unfinished.append(key)
        self.record["rows"][f"{child.exp_id} [{child.profile}]"] = row
        self.log(f"  [{child.exp_id}] {outcome} after {row['seconds']:.0f} s")
        self.pack()
        return code == 0

    def table2(self, profile: str) -> None:
        """Table 2 on this device from the recorded models of `profile`; killed at the end of the budget."""
        cmd = ["table2", "--profile", profile, "--device", self.device, "--threads", "1", "--results-dir",
               str(self.results), "--figures-dir", str(self.work / "figures"), "--no-progress"]
        code = self.command(cmd, "table2", timeout=self.left() - END_S)
        if code == 0 and (self.work / "figures" / "table2.md").exists():
            shutil.copy(self.work / "figures" / "table2.md", self.out / "table2.md")
            self.bench = bench_dir(self.results, resolve_device(self.device).type)
        self.record["stages"].append({"stage": "table2", "exit": code})
        self.pack()

    def render_table1(self, profile: str) -> None:
        self.log(f"== stage 5: Table 1 [{profile}] from {self.results}")
        cmd = ["table1", "--profile", profile, "--results-dir", str(self.results), "--figures-dir",
               str(self.work / "figures"), "--no-train", "--no-progress"]
        self.command(cmd, "table1", timeout=max(self.left() - 5, 5))
        suffix = profile_suffix(profile)
        if (self.work / "figures" / f"table1{suffix}.md").exists():
            shutil.copy(self.work / "figures" / f"table1{suffix}.md", self.out / "table1.md")

    def command(self, args: list[str], tag: str, timeout: float) -> int:
        """`python -m reproduce ARGS`, its output in the log, killed after `timeout` seconds (then -9)."""
        proc = subprocess.Popen(_python() + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=REPO, env=_child_env(self.args.data, self.mode.threads))
        reader = threading.Thread(target=self._relay, args=(proc, tag), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.log(f"  [{tag}] killed: the budget ended")
        reader.join(timeout=5)
        return proc.returncode

    def _relay(self, proc: subprocess.Popen, tag: str) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log(f"  [{tag}] {line.rstrip()}")

    def pack(self) -> None:
        """results.tar.gz in the output folder: every results folder recorded during this job (pretrains
        that a run trained on its own too; without *.large.*), Table 2's bench folder, the resume points
        of unfinished runs, as far as they fit in what comes back (MAX_RETURN_BYTES)."""
        files: list[Path] = []
        for spec_json in sorted(self.results.glob("*/*/seed*/spec.json")):
            if spec_json.stat().st_mtime >= self.started:  # the copied results keep their older times
                files += sorted(p for p in spec_json.parent.iterdir() if p.is_file())
        for exp_id, profile in self.unfinished:
            files += sorted(p for p in (self.results / ".work" / exp_id / profile).rglob("*") if p.is_file())
        if self.bench is not None:
            files += sorted(p for p in self.bench.iterdir() if p.is_file())
        keep, left_out, total = [], [], 0
        for p in sorted(files, key=_pack_priority):  # what the tables need first, posteriors last
            size = p.stat().st_size
            if ".large." in p.name or total + size > MAX_RETURN_BYTES - 2**20:
                left_out.append(f"{p.relative_to(self.results)} ({size / 2**20:.1f} MiB)")
            else:
                keep.append(p)
                total += size
        part = self.work / "results.tar.gz"
        with tarfile.open(part, "w:gz") as tar:
            for p in keep:
                tar.add(p, arcname=str(p.relative_to(self.results)))
        if part.stat().st_size > MAX_RETURN_BYTES:
            self.log(f"  WARNING: results.tar.gz is {part.stat().st_size / 2**20:.1f} MiB, over what comes back")
        with atomic_path(self.out / "results.tar.gz") as tmp:
            shutil.copy(part, tmp)
        self.record["packed"] = {"files": len(keep), "bytes": part.stat().st_size, "left_out": left_out}
        self.save_record()
        self.log(f"  results.tar.gz: {len(keep)} files, {part.stat().st_size / 1024:.0f} KiB"
                 + (f"; not returned (too large): {', '.join(left_out)}" if left_out else ""))


class Child:
    """One `python -m reproduce run` process; its output relayed to the job's log, its epochs counted
    from its checkpoint's rewrites (one per epoch)."""

    def __init__(self, job: Job, exp_id: str, profile: str, epochs: int, stop_at: float) -> None:
        self.job, self.exp_id, self.profile, self.epochs = job, exp_id, profile, epochs
        self.started, self.killed, self.epochs_seen = time.time(), False, 0
        self.checkpoint = checkpoint_path(job.results, exp_id, profile, SEED)
        self.mtime = self._mtime()
        self.last = self.started
        stop = datetime.fromtimestamp(stop_at).isoformat(timespec="seconds")
        cmd = ["run", exp_id, "--profile", profile, "--seed", str(SEED), "--device", job.device, "--results-dir",
               str(job.results), "--spec", str(job.args.spec), "--no-progress", "--stop-at", stop]
        if job.args.data:
            cmd += ["--data-dir", job.args.data]
        job.log(f"  [{exp_id}] starting [{profile}], {epochs} epochs, stops at an epoch boundary before {stop}")
        self.proc = subprocess.Popen(_python() + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=REPO, env=_child_env(job.args.data, job.mode.threads))
        self.reader = threading.Thread(target=job._relay, args=(self.proc, exp_id), daemon=True)
        self.reader.start()

    def _mtime(self) -> float:
        try:
            return self.checkpoint.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def poll(self) -> bool:
        """True once the process has ended; logs each epoch (checkpoint rewrite) with the pace it implies."""
        m = self._mtime()
        if m > self.mtime:
            self.mtime, now = m, time.time()
            self.epochs_seen += 1
            pace = now - self.last
            self.last = now
            rest = (self.epochs - self.epochs_seen) * pace
            self.job.log(f"  [{self.exp_id}] epoch {self.epochs_seen}/{self.epochs} done ({pace:.1f} s"
                         f"{' incl. start' if self.epochs_seen == 1 else ''}); at this pace training ends in "
                         f"{rest:.0f} s, {self.job.left() - rest:.0f} s before the budget's end")
        if self.proc.poll() is None:
            return False
        self.reader.join(timeout=5)
        return True

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=5)


def _pack_priority(path: Path) -> tuple[int, str]:
    """Records (JSON, CSV) first, then the model and its encoded file, then posteriors and resume points."""
    rank = 0 if path.suffix in (".json", ".csv", ".md") else 1 if path.name.startswith("model.") else 2
    return rank, str(path)


def _python() -> list[str]:
    return [sys.executable, "-m", "reproduce"]


def _child_env(data: str | None, threads: int | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if data:
        env["BAYESCOMP_DATA"] = data
    if threads is not None:  # read by torch at start: the run's intra-op threads
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _write_speed(folder: Path, mib: int) -> float:
    """Bytes per second of torch.save into `folder` (a checkpoint is written after every epoch)."""
    path = folder / "write_speed.pt"
    x = torch.ones(mib * 2**18)
    t0 = time.perf_counter()
    torch.save(x, path)
    seconds = time.perf_counter() - t0
    path.unlink()
    return mib * 2**20 / max(seconds, 1e-6)


if __name__ == "__main__":
    sys.exit(main())
