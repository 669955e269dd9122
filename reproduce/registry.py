"""Every name an experiment may use, as literal dicts: models, data sets, methods."""
from __future__ import annotations

from baselines.deep_compression import DeepCompression
from baselines.magnitude import MagnitudePruning
from baselines.random_pruning import RandomPruning
from baselines.sparse_vd import SparseVD
from bayescomp.bc import BCGroupHS, BCGroupNJ
from bayescomp.method import Dense
from bayescomp.models import lenet5_caffe, lenet300, vgg_cifar

MODELS = {"lenet300": lenet300, "lenet5_caffe": lenet5_caffe, "vgg_cifar": vgg_cifar}
DATASETS = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}  # name -> input shape
METHODS = {"dense": Dense, "bc_gnj": BCGroupNJ, "bc_ghs": BCGroupHS, "magnitude": MagnitudePruning,
           "deep_compression": DeepCompression, "sparse_vd": SparseVD, "random": RandomPruning}


def get(registry: dict, name: str, what: str):
    """registry[name], or a ValueError listing the valid names."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(registry)}")
    return registry[name]
