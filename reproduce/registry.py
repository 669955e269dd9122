"""The methods an experiment may name, as a literal dict; and what the harness reads off a registered
method's class (whether it has a posterior, prunes groups, trains like another), so that sweeps,
figures and Table 2 take a new method in without a list of ids to extend. The models an experiment may
name are bayescomp.models.MODELS, the data sets bayescomp.data.DATASETS (the library needs them too)."""
from __future__ import annotations

from baselines.deep_compression import DeepCompression
from baselines.magnitude import MagnitudePruning
from baselines.random_pruning import RandomPruning
from baselines.sparse_vd import SparseVD
from bayescomp.bc import BayesianCompression, BCGroupHS, BCGroupNJ
from bayescomp.method import Dense, Method
from bayescomp.models import DENSE

METHODS = {"dense": Dense, "bc_gnj": BCGroupNJ, "bc_ghs": BCGroupHS, "magnitude": MagnitudePruning,
           "deep_compression": DeepCompression, "sparse_vd": SparseVD, "random": RandomPruning}


def has_posterior(method: Method) -> bool:
    """Whether `method` trains Bayesian layers (its layer set is not the dense one): its runs keep the
    trained posterior (posterior.pt), which `reproduce sweep` thresholds again without retraining."""
    return method.layers() is not DENSE


def prunes_groups(name: str) -> bool:
    """Whether method `name` removes whole units and filters by a per-group statistic against thresholds
    that it records in details.json (bayescomp.bc.BayesianCompression): Bayesian Compression's pruning.
    Sparse VD, variational too, prunes single weights: not this."""
    return issubclass(METHODS[name], BayesianCompression)


# the Method hooks a training run calls: every public one but `compress`, which runs once at the end
TRAINING_HOOKS = tuple(n for n, v in vars(Method).items() if callable(v) and not n.startswith("_") and n != "compress")


def trains_like(name: str) -> tuple:
    """What a training epoch of method `name` runs: its class's training hooks. Methods with equal values
    train alike and cost the same (deep_compression and random train as magnitude)."""
    return tuple(getattr(METHODS[name], hook) for hook in TRAINING_HOOKS)
