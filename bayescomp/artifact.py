"""Saved torch files (models, posteriors, checkpoints, the data cache) read as plain data, never code.

`load_plain` is torch.load with weights_only=True and an `ArtifactError` that names the file and the
fix when it is damaged or not plain data. Not here: what the files hold (bayescomp.models,
bayescomp.train, reproduce.results).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class ArtifactError(ValueError):
    """A saved torch file (model, posterior, checkpoint) is unreadable or is not plain data."""


def load_plain(path: str | Path, fix: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(path, weights_only=True): tensors, containers, numbers and strings, never code.

    Raises ArtifactError naming the file and ending with `fix` (what the user should do) if the file
    is empty, truncated or corrupt, or holds Python objects that would run code when loaded (those
    are refused, never loaded); FileNotFoundError passes through.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ArtifactError(f"{path} is corrupt (unpickling failed: {e}); {fix}") from None
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        what = found.group(1).strip().split(". ")[0] if found else "not tensors and plain data"
        problem = "loading it would run code" if "global" in what.lower() else "it is not a plain torch file"
        raise ArtifactError(f"{path} was refused and not loaded: {problem} ({what}); files this suite writes "
                            f"hold only tensors and plain data; {fix}") from None
    except Exception as e:  # EOFError (0 bytes), RuntimeError (truncated zip), OSError, ...
        reason = type(e).__name__ + (f": {str(e).split('. ')[0]}" if str(e) else "")
        raise ArtifactError(f"{path} is empty, truncated or corrupt ({reason}); {fix}") from None
