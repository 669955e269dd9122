"""Random pruning: the floor every pruning benchmark should show (a method must beat it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from baselines.pruning import MaskPruning, top_k_masks


@dataclass
class RandomPruning(MaskPruning):
    name: ClassVar[str] = "random"

    def masks(self, weights: dict[str, Tensor], keep: dict[str, int]) -> dict[str, Tensor]:
        # random scores, but weights already pruned (exactly 0) stay pruned
        scores = {n: torch.rand(w.shape, device=w.device) * w.ne(0) for n, w in weights.items()}
        return top_k_masks(scores, keep)
