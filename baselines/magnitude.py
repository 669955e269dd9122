"""Iterative magnitude pruning with retraining [HPTD15]: keep the weights of largest |w|.

[HPTD15] Han, Pool, Tran, Dally. Learning both Weights and Connections for Efficient Neural Networks. NIPS 2015.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from baselines.pruning import MaskPruning, top_k_masks


@dataclass
class MagnitudePruning(MaskPruning):
    """Schedule and targets as in baselines.pruning; the score of a weight is |w| [HPTD15] Sec. 3."""

    name: ClassVar[str] = "magnitude"

    def masks(self, weights: dict[str, Tensor], keep: dict[str, int]) -> dict[str, Tensor]:
        return top_k_masks({n: w.abs() for n, w in weights.items()}, keep)
