"""The only place numbers are made: every row of every table comes from `summarize`.

Definitions (DESIGN.md; REPRODUCING.md repeats them for readers):
- error_pct: top-1 test error of the final model (structurally pruned export of `Compressed.model`).
- nonzero_pct: |w != 0| / |w| over the prunable layers' weights, biases excluded [LUW17] Table 1.
- architecture: kept units per layer in the paper's notation (bayescomp.prune.architecture).
- bits: total bits per weight per layer; 32 where not quantised.
- cr_fast: 32 |W| / sum_l n_l b_l, n_l the weights of the structurally pruned dense layer l
  [LUW17] Sec. 5 ("fast prediction"); biases excluded.
- cr_max: 32 |W| / bits of the weight file (`model.bcw`, format in bayescomp.coding), headers
  included, whose decoder returns model.pt's weights (checked here up to VERIFY_MAX_NONZERO
  nonzero weights); artifact_bytes: its size, and artifact_{positions,values,header}_bytes what
  they are spent on (header: structure, coder tables); coding: per layer, what was chosen, its
  bytes and the empirical entropy of its coded symbols.
- cr_max_entropy: 32 |W| / sum over layers of n·H of the coded symbols (raw float32 at 32 bits):
  the CR max of an ideal zeroth-order coder with free tables, headers and masks.
- macs_dense / macs_pruned: multiply-adds per image (not FLOPs: one multiply-add is two), counted
  by torch's FlopCounterMode (`multiply_adds`, also Table 2's counter).
- metrics_format: METRICS_FORMAT, the version of these names; reproduce.migrate renames older files'.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bayescomp.coding import decode_bytes, encode_model
from bayescomp.data import ImageData
from bayescomp.method import Compressed
from bayescomp.models import prunable_layers
from bayescomp.prune import LayerStructure, export, structure

VERIFY_MAX_NONZERO = 2_000_000  # Huffman decoding is a Python loop: verify round trips up to this size
METRICS_FORMAT = 2  # of summarize's keys; 2: multiply-adds as macs_* (1, no key: flops_*); bump on a rename


@torch.inference_mode()
def error_pct(model: nn.Module, x: Tensor, y: Tensor, device: torch.device | str = "cpu",
              batch_size: int = 1000) -> float:
    """Top-1 error in percent of `model` in eval mode on uint8 images x: (N, C, H, W), labels y: (N,);
    batches of `batch_size` on `device`. The error of every table row and training epoch."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    wrong = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device).float().div_(255)
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        wrong += int((model(xb).argmax(1).cpu() != y[i:i + batch_size]).sum())
    model.train(was_training)
    return 100.0 * wrong / len(x)


def nonzero_pct(weights: list[Tensor]) -> float:
    """100 * nonzero / total over the given weight tensors."""
    return 100.0 * sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)


def cr_fast(struct: list[LayerStructure], bits: list[int], dense_weights: int) -> float:
    """32 |W| / sum_l n_l b_l over the structurally pruned layers. [LUW17] Sec. 5"""
    stored = sum(s.n_weights * b for s, b in zip(struct, bits))
    return 32.0 * dense_weights / stored


def cr_max(artifact_bytes: int, dense_weights: int) -> float:
    """32 |W| / bits of the weight file, headers included. [LUW17] Sec. 5 ("maximum compression")"""
    return 32.0 * dense_weights / (8 * artifact_bytes)


def artifact_metrics(small: nn.Module, model_name: str, path: Path | None = None,
                     model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encode a structurally pruned model's weights (bayescomp.coding), write the file to `path` if
    given, check that it decodes to the model's weights (−0.0 read as +0.0), and measure it.

    |W| is the dense network's prunable weights, from the dense shapes the file records.
    """
    blob, coding = encode_model(small, model_name, model_args)
    weights = {n: m.weight.detach().cpu().float() + 0.0 for n, m in prunable_layers(small)}
    verified = None
    if sum(int(w.count_nonzero()) for w in weights.values()) <= VERIFY_MAX_NONZERO:
        back = decode_bytes(blob)
        verified = list(back) == list(weights) and all(
            back[n].shape == w.shape and torch.equal(back[n].view(torch.int32), w.view(torch.int32))
            for n, w in weights.items())
        if not verified:
            raise RuntimeError("the weight file did not decode to the model's weights; this is a bug in bayescomp.coding")
    if path is not None:
        path.write_bytes(blob)
    dense = sum(c["dense"] for c in coding)
    return {
        "cr_max": cr_max(len(blob), dense),
        "cr_max_entropy": 32.0 * dense / max(sum(c["entropy_bits"] for c in coding), 1.0),  # 0 bits: all constant
        "artifact_bytes": len(blob),
        "artifact_positions_bytes": sum(c["positions_bytes"] for c in coding),
        "artifact_values_bytes": sum(c["values_bytes"] for c in coding),
        "artifact_header_bytes": sum(c["header_bytes"] + c["table_bytes"] for c in coding),
        "artifact_verified": verified,
        "coding": coding,
    }


def multiply_adds(model: nn.Module, input_shape: tuple[int, ...], *, nonzero: bool = False) -> int:
    """Multiply-adds of one forward pass on one example, counted by torch's FlopCounterMode (2 FLOPs per
    multiply-add): every weight's, zeros included. nonzero=True: without the zero weights of Linear
    layers, which a sparse (CSR) product skips and a dense conv does not (Table 2's CSR form)."""
    param = next(model.parameters())
    x = torch.zeros((1, *input_shape), device=param.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(x)
    macs = counter.get_total_flops() // 2
    if nonzero:  # one example: each weight of a Linear layer takes part in one multiply-add
        macs -= sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))
    return macs


def summarize(compressed: Compressed, data: ImageData, model_name: str, device: torch.device | str = "cpu",
              test_subset: int | None = None, artifact_path: Path | None = None,
              model_args: dict[str, Any] | None = None) -> tuple[dict[str, Any], nn.Module]:
    """Measure a compressed model; returns (metrics, the structurally pruned dense model).
    artifact_path: where to write the weight file whose size gives CR max (e.g. <results>/model.bcw).
    model_args: the model builder's arguments of the spec (the dense shapes CR max counts against)."""
    weights = {n: layer.weight.detach().cpu() for n, layer in compressed.layers.items()}
    bits = [layer.bits for layer in compressed.layers.values()]
    struct = structure(weights)
    small, widths = export(compressed.model.cpu(), model_name)
    sub = data.subset(test=test_subset)
    x, y = sub.test_x, sub.test_y
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    dense_n = sum(w.numel() for w in weights.values())
    artifact = artifact_metrics(small, model_name, artifact_path, model_args)
    metrics: dict[str, Any] = {
        "metrics_format": METRICS_FORMAT,
        "error_pct": error_pct(small.to(device), x, y, device),
        "error_masked_pct": error_pct(compressed.model.to(device), x, y, device),
        "nonzero_pct": nonzero_pct(list(weights.values())),
        "architecture": "-".join(map(str, widths)),
        "bits": "-".join(map(str, bits)),
        "cr_fast": cr_fast(struct, bits, dense_n),
        "cr_max": artifact.pop("cr_max"),
        "cr_max_entropy": artifact.pop("cr_max_entropy"),
        "model_bytes": buf.getbuffer().nbytes,
        "n_weights_dense": dense_n,
        "n_weights_pruned": sum(s.n_weights for s in struct),
        "macs_dense": multiply_adds(compressed.model, tuple(x.shape[1:])),
        "macs_pruned": multiply_adds(small, tuple(x.shape[1:])),
        "test_images": len(x),
        **artifact,
    }
    metrics.update({f"info_{k}": v for k, v in compressed.info.items()  # scalars and per-layer lists only
                    if isinstance(v, (int, float, str)) or (isinstance(v, list) and len(v) <= 32)})
    return metrics, small.cpu()
