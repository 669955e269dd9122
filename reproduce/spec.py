"""Experiment specs: load `experiments.toml`, validate every key and name, resolve a profile, hash.

A resolved spec = the experiment's keys, overridden by `[profiles.<p>]`, overridden by the
experiment's own `[experiment.<p>]` table. Unknown keys, profiles, models, data sets or methods
are errors that list the valid choices. The hash covers everything that changes what a run
computes (not seeds, targets or labels), so results recorded under another spec are detected.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayescomp.data import DATASETS
from bayescomp.models import MODELS
from bayescomp.train import TrainConfig
from reproduce.registry import METHODS

DEFAULT_TOML = Path(__file__).with_name("experiments.toml")
RESULTS_FORMAT = 1  # bump when a change to the code invalidates every recorded result
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
LATE_TRAIN_KEYS = {"kl_warmup_start": 0}  # training keys added after results were recorded, with their defaults
RUN_KEYS = ("seeds", "train_subset", "test_subset", "val_size", "pretrain", "method_args", "model_args",
            "cpu_epoch_seconds",
            "needs_gpu")
EXPERIMENT_KEYS = ("id", "label", "table", "model", "dataset", "method", "targets", "expected") + RUN_KEYS + TRAIN_KEYS
PROFILE_KEYS = ("description",) + RUN_KEYS + TRAIN_KEYS
TARGET_KEYS = ("value", "tol", "tag", "source")
EXPECTED_KEYS = ("value", "tol", "kind", "basis", "source")  # written by `python -m reproduce calibrate`
TRIAL_KEYS = ("name", "experiment", "base", "description", "set")
PUBLISHED_KEYS = ("model", "label", "source", "nonzero_pct", "architecture", "bits", "cr_fast", "cr_max", "error_pct")


class SpecError(ValueError):
    """experiments.toml (or a name asked for on the command line) is invalid."""


@dataclass(frozen=True)
class RunSpec:
    """One experiment resolved for one profile."""

    id: str
    profile: str
    label: str
    table: str
    model: str
    dataset: str
    method: str
    method_args: dict[str, Any]
    train: TrainConfig
    seeds: tuple[int, ...]
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int = 5000
    pretrain: str | None = None
    cpu_epoch_seconds: float | None = None
    needs_gpu: bool = False  # table1 does not train it on a machine without one
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    pretrain_hash: str | None = None  # the resolved pretrain's own hash (which covers its pretrain, and so on)
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model builder
    pretrain_profile: str | None = None  # the profile its pretrain is resolved in (None: its own; trials: their base)

    def hashed_content(self) -> dict[str, Any]:
        """What determines the results of a run (seed aside), including what its pretrain was built from."""
        train = dataclasses.asdict(self.train)
        for key in LATE_TRAIN_KEYS:  # hashed only when set, so the hashes of specs without them stay as recorded
            if train[key] == LATE_TRAIN_KEYS[key]:
                del train[key]
        content = {"format": RESULTS_FORMAT, "id": self.id, "model": self.model, "dataset": self.dataset,
                   "method": self.method, "method_args": self.method_args, "train": train,
                   "train_subset": self.train_subset, "test_subset": self.test_subset, "val_size": self.val_size,
                   "pretrain": self.pretrain}
        if self.pretrain is not None:
            content["pretrain_hash"] = self.pretrain_hash
        if self.model_args:  # only when given, so the hashes of specs without them stay as recorded
            content["model_args"] = self.model_args
        return content

    @property
    def hash(self) -> str:
        return content_hash(self.hashed_content())


def content_hash(content: dict[str, Any]) -> str:
    """The 16-hex-digit hash of a spec's hashed content."""
    blob = json.dumps(content, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Suite:
    """All experiments of a TOML file."""

    experiments: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]]
    published: list[dict[str, Any]]
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve_trial(self, name: str) -> RunSpec:
        """A [[trial]]: its experiment resolved in its `base` profile, with the keys of `set` replaced.

        Its results go to results/<experiment>/trial.<name>/seed<k>/; its pretrain is the base
        profile's (a trial from the dense net starts from the recorded paper model)."""
        if name not in self.trials:
            raise SpecError(f"unknown trial {name!r}; valid: {', '.join(self.trials) or '(none in this file)'}")
        t = self.trials[name]
        base = self.resolve(t["experiment"], t.get("base", "paper"))
        sets = dict(t.get("set", {}))
        where = f"trial {name!r}"
        _check_keys(sets, RUN_KEYS + TRAIN_KEYS, f"{where}, set")
        train = {**dataclasses.asdict(base.train), **{k: sets.pop(k) for k in TRAIN_KEYS if k in sets}}
        try:
            cfg = TrainConfig(**train)
        except (TypeError, ValueError) as e:
            raise SpecError(f"{where}: {e}") from e
        pretrain = sets.pop("pretrain", base.pretrain) or None  # pretrain = "" trains from scratch
        if pretrain is not None and pretrain not in self.experiments:
            raise SpecError(f"{where}: pretrain {pretrain!r} is not an experiment id; valid: {', '.join(self.experiments)}")
        method_args = {**base.method_args, **sets.pop("method_args", {})}
        _check_run_values(sets, where)
        return dataclasses.replace(
            base, profile=f"trial.{name}", label=f"{base.label} [{name}]", train=cfg, method_args=method_args,
            pretrain=pretrain, pretrain_profile=base.profile, expected={},
            pretrain_hash=None if pretrain is None else self.resolve(pretrain, base.profile).hash,
            **{k: (tuple(v) if k == "seeds" else v) for k, v in sets.items()})

    def run_spec(self, exp_id: str, where: str) -> RunSpec:
        """The spec of experiment `exp_id` in profile `where`, or of trial NAME where `where` is `trial.NAME`
        (a SpecError if that trial is of another experiment)."""
        if not where.startswith("trial."):
            return self.resolve(exp_id, where)
        spec = self.resolve_trial(where[len("trial."):])
        if spec.id != exp_id:
            raise SpecError(f"{where} is a trial of {spec.id}, not of {exp_id}")
        return spec

    def ids(self, table: str | None = None) -> list[str]:
        return [i for i, e in self.experiments.items() if table is None or e.get("table") == table]

    def resolve(self, exp_id: str, profile: str, _resolving: frozenset[str] = frozenset()) -> RunSpec:
        if exp_id not in self.experiments:
            raise SpecError(f"unknown experiment {exp_id!r}; valid: {', '.join(self.experiments)}")
        if profile not in self.profiles:
            raise SpecError(f"unknown profile {profile!r}; valid: {', '.join(self.profiles)}")
        exp = self.experiments[exp_id]
        merged = {k: v for k, v in exp.items() if k not in self.profiles}
        merged.update({k: v for k, v in self.profiles[profile].items() if k != "description"})
        merged.update(exp.get(profile, {}))
        train = {k: merged.pop(k) for k in TRAIN_KEYS if k in merged}
        try:
            cfg = TrainConfig(**train)  # checks the type and range of every training key
        except (TypeError, ValueError) as e:
            raise SpecError(f"experiment {exp_id!r}, profile {profile!r}: {e}") from e
        _check_run_values(merged, f"experiment {exp_id!r}, profile {profile!r}")
        expected = merged.pop("expected", {}).get(profile, {})
        pretrain = merged.get("pretrain")
        if pretrain is not None and pretrain not in self.experiments:
            raise SpecError(f"experiment {exp_id!r}: pretrain {pretrain!r} is not an experiment id; "
                            f"valid: {', '.join(self.experiments)}")
        if pretrain is not None and pretrain in _resolving:
            raise SpecError(f"experiment {exp_id!r}: pretrain chain loops back to {pretrain!r}")
        pretrain_hash = None if pretrain is None else self.resolve(pretrain, profile, _resolving | {exp_id}).hash
        return RunSpec(pretrain_hash=pretrain_hash, id=exp_id, profile=profile, label=merged.pop("label", exp["method"]),
                       table=merged.pop("table", ""), model=merged.pop("model"), dataset=merged.pop("dataset"),
                       method=merged.pop("method"), method_args=dict(merged.pop("method_args", {})), train=cfg,
                       model_args=dict(merged.pop("model_args", {})),
                       seeds=tuple(merged.pop("seeds", (0,))), expected=expected,
                       targets=merged.pop("targets", {}), **{k: merged[k] for k in merged if k in RUN_KEYS})


def load_suite(path: Path = DEFAULT_TOML) -> Suite:
    """Parse and validate the experiments file."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"cannot read {path}: {e}") from e
    _check_keys(raw, ("profiles", "experiment", "published", "trial"), str(path))
    profiles = raw.get("profiles", {})
    for name, prof in profiles.items():
        _check_keys(prof, PROFILE_KEYS, f"[profiles.{name}]")
    experiments: dict[str, dict[str, Any]] = {}
    for exp in raw.get("experiment", []):
        where = f"experiment {exp.get('id', '?')!r}"
        _check_keys(exp, EXPERIMENT_KEYS + tuple(profiles), where)
        for key in ("id", "model", "dataset", "method"):
            if key not in exp:
                raise SpecError(f"{where}: missing required key {key!r}")
        if exp["id"] in experiments:
            raise SpecError(f"{where}: duplicate id")
        if exp["id"] != f"{exp['model']}.{exp['method']}":
            raise SpecError(f"{where}: id must be '<model>.<method>' = {exp['model']}.{exp['method']!r}")
        for key, reg in (("model", MODELS), ("dataset", DATASETS), ("method", METHODS)):
            if exp[key] not in reg:
                raise SpecError(f"{where}: unknown {key} {exp[key]!r}; valid: {', '.join(reg)}")
        for p in profiles:
            _check_keys(exp.get(p, {}), RUN_KEYS + TRAIN_KEYS, f"{where}, [{p}]")
        for metric, target in exp.get("targets", {}).items():
            _check_keys(target, TARGET_KEYS, f"{where}, target {metric!r}")
        for p, exp_vals in exp.get("expected", {}).items():
            if p not in profiles:
                raise SpecError(f"{where}: expected values for unknown profile {p!r}; valid: {', '.join(profiles)}")
            for metric, target in exp_vals.items():
                _check_keys(target, EXPECTED_KEYS, f"{where}, expected.{p}.{metric}")
        experiments[exp["id"]] = exp
    for row in raw.get("published", []):
        _check_keys(row, PUBLISHED_KEYS, f"[[published]] {row.get('label', '?')!r}")
        if row.get("model") not in MODELS:
            raise SpecError(f"[[published]] {row.get('label', '?')!r}: model {row.get('model')!r} unknown; "
                            f"valid: {', '.join(MODELS)}")
    trials: dict[str, dict[str, Any]] = {}
    for t in raw.get("trial", []):
        where = f"[[trial]] {t.get('name', '?')!r}"
        _check_keys(t, TRIAL_KEYS, where)
        if not str(t.get("name", "")).replace("_", "").isalnum() or t["name"] in trials:
            raise SpecError(f"{where}: needs a unique name of letters, digits and _")
        if t.get("experiment") not in experiments:
            raise SpecError(f"{where}: experiment {t.get('experiment')!r} unknown; valid: {', '.join(experiments)}")
        if t.get("base", "paper") not in profiles:
            raise SpecError(f"{where}: base profile {t.get('base')!r} unknown; valid: {', '.join(profiles)}")
        trials[t["name"]] = t
    suite = Suite(experiments, profiles, raw.get("published", []), trials)
    for name in trials:
        spec = suite.resolve_trial(name)
        try:
            METHODS[spec.method](**spec.method_args)
        except TypeError as e:
            raise SpecError(f"trial {name!r}: bad method_args for {spec.method!r} ({e})") from e
    for exp_id in experiments:  # resolving checks TrainConfig values and method_args
        for p in profiles:
            spec = suite.resolve(exp_id, p)
            try:
                METHODS[spec.method](**spec.method_args)
            except TypeError as e:
                fields = [f.name for f in dataclasses.fields(METHODS[spec.method])]
                raise SpecError(f"experiment {exp_id!r}: bad method_args for {spec.method!r} ({e}); "
                                f"valid keys: {', '.join(fields) or '(none)'}") from e
            builder_keys = [k for k in inspect.signature(MODELS[spec.model]).parameters
                             if k not in ("layers", "mean", "std", "widths")]
            if set(spec.model_args) - set(builder_keys):
                raise SpecError(f"experiment {exp_id!r}, profile {p!r}: unknown model_args "
                                f"{sorted(set(spec.model_args) - set(builder_keys))} for {spec.model!r}; "
                                f"valid keys: {', '.join(builder_keys) or '(none)'}")
    return suite


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low  # True is an int in Python


MAX_SEED = 2**31 - 1
RUN_VALUES: dict[str, tuple[str, str, Any]] = {  # key -> (what it must be, an example, the test)
    "seeds": (f"a non-empty list of distinct integers from 0 to {MAX_SEED}", "[0, 1, 2]",
              lambda v: isinstance(v, list) and len(v) > 0 and len(set(v)) == len(v)
              and all(_is_int(s, 0) and s <= MAX_SEED for s in v)),
    "train_subset": ("a positive integer", "2000", lambda v: _is_int(v, 1)),
    "test_subset": ("a positive integer", "2000", lambda v: _is_int(v, 1)),
    "val_size": ("a positive integer", "5000", lambda v: _is_int(v, 1)),
    "pretrain": ("an experiment id", '"lenet300.dense"', lambda v: isinstance(v, str)),
    "method_args": ("a table", "{ threshold = 3 }", lambda v: isinstance(v, dict)),
    "model_args": ("a table", "{ width = 0.125 }", lambda v: isinstance(v, dict)),
    "cpu_epoch_seconds": ("a positive number", "2.3",
                          lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")),
    "needs_gpu": ("true or false", "true", lambda v: isinstance(v, bool)),
    "label": ("a string", '"BC-GNJ"', lambda v: isinstance(v, str)),
    "table": ("a string", '"table1"', lambda v: isinstance(v, str)),
}


def _check_run_values(merged: dict[str, Any], where: str) -> None:
    """The type and range of every run key of a resolved experiment (TrainConfig checks the training keys)."""
    for key, (what, example, ok) in RUN_VALUES.items():
        if key in merged and not ok(merged[key]):
            raise SpecError(f"{where}: {key} must be {what} (e.g. {key} = {example}), "
                            f"got {merged[key]!r} ({type(merged[key]).__name__})")


def _check_keys(table: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")


def train_command(exp_id: str, where: str, seed: int | None = None, force: bool = False) -> str:
    """The command that trains experiment `exp_id` in profile `where` (or trial NAME where `where` is
    `trial.NAME`); with `seed`, that seed only; with `force`, again over its current result. A trial's
    command trains each of its seeds not yet current, so `seed` and `force` do not apply to it: to train
    a current trial run again, remove its results folder first."""
    if where.startswith("trial."):
        return f"python -m reproduce trial {where[len('trial.'):]}"
    return (f"python -m reproduce run {exp_id} --profile {where}" + (f" --seed {seed}" if seed is not None else "")
            + (" --force" if force else ""))
