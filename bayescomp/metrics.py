"""The only place numbers are made: every row of every table comes from `summarize`.

Definitions (DESIGN.md; REPRODUCING.md repeats them for readers):
- error_pct: top-1 test error of the final model (structurally pruned export of `Compressed.model`).
- nonzero_pct: |w != 0| / |w| over the prunable layers' weights, biases excluded [LUW17] Table 1.
- architecture: kept units per layer in the paper's notation (bayescomp.prune.architecture).
- bits: total bits per weight per layer; 32 where not quantised.
- cr_fast: 32 |W| / sum_l n_l b_l, n_l the weights of the structurally pruned dense layer l
  [LUW17] Sec. 5 ("fast prediction"); biases excluded.
- cr_max: 32 |W| / bits of the artifact written by bayescomp.coding (sparse relative indices,
  codebook indices, Huffman), whose decoder returns the same weights (checked here up to
  VERIFY_MAX_NONZERO nonzero weights); artifact_bytes: its size.
- flops_dense / flops_pruned: multiply-adds per image, counted by torch's FlopCounterMode.
"""
from __future__ import annotations

import io
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bayescomp.coding import decode, encode
from bayescomp.data import ImageData
from bayescomp.method import Compressed
from bayescomp.prune import LayerStructure, export, structure
from bayescomp.train import evaluate

VERIFY_MAX_NONZERO = 2_000_000  # decoding is a Python loop: verify round trips up to this size


def nonzero_pct(weights: list[Tensor]) -> float:
    """100 * nonzero / total over the given weight tensors."""
    return 100.0 * sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)


def cr_fast(struct: list[LayerStructure], bits: list[int], dense_weights: int) -> float:
    """32 |W| / sum_l n_l b_l over the structurally pruned layers. [LUW17] Sec. 5"""
    stored = sum(s.n_weights * b for s, b in zip(struct, bits))
    return 32.0 * dense_weights / stored


def multiply_adds(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on one example (FlopCounterMode counts 2 FLOPs per MAC)."""
    param = next(model.parameters())
    x = torch.zeros((1, *input_shape), device=param.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(x)
    return counter.get_total_flops() // 2


def summarize(compressed: Compressed, data: ImageData, model_name: str, device: torch.device | str = "cpu",
              test_subset: int | None = None) -> tuple[dict[str, Any], nn.Module]:
    """Measure a compressed model; returns (metrics, the structurally pruned dense model)."""
    weights = {n: layer.weight.detach().cpu() for n, layer in compressed.layers.items()}
    bits = [layer.bits for layer in compressed.layers.values()]
    struct = structure(weights)
    small, widths = export(compressed.model.cpu(), model_name)
    sub = data.subset(test=test_subset)
    x, y = sub.test_x, sub.test_y
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    dense_n = sum(w.numel() for w in weights.values())
    artifact = encode(weights)
    verified = None
    if sum(int(w.count_nonzero()) for w in weights.values()) <= VERIFY_MAX_NONZERO:
        back = decode(artifact)
        verified = all(torch.equal(back[n], w) for n, w in weights.items())
        if not verified:
            raise RuntimeError("the weight encoder did not round-trip; this is a bug in bayescomp.coding")
    metrics: dict[str, Any] = {
        "error_pct": evaluate(small.to(device), x, y, device),
        "error_masked_pct": evaluate(compressed.model.to(device), x, y, device),
        "nonzero_pct": nonzero_pct(list(weights.values())),
        "architecture": "-".join(map(str, widths)),
        "bits": "-".join(map(str, bits)),
        "cr_fast": cr_fast(struct, bits, dense_n),
        "cr_max": 32.0 * dense_n / (8 * len(artifact)),
        "artifact_bytes": len(artifact),
        "artifact_verified": verified,
        "model_bytes": buf.getbuffer().nbytes,
        "n_weights_dense": dense_n,
        "n_weights_pruned": sum(s.n_weights for s in struct),
        "flops_dense": multiply_adds(compressed.model, tuple(x.shape[1:])),
        "flops_pruned": multiply_adds(small, tuple(x.shape[1:])),
        "test_images": len(x),
    }
    metrics.update({f"info_{k}": v for k, v in compressed.info.items()  # scalars and per-layer lists only
                    if isinstance(v, (int, float, str)) or (isinstance(v, list) and len(v) <= 32)})
    return metrics, small.cpu()
