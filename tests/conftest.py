"""Shared fixtures: the offline data folder (../shared/data or BAYESCOMP_DATA) and a temporary cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("BAYESCOMP_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "MNIST" / "raw").is_dir():
        pytest.skip(f"no offline data at {DATA_DIR}; set BAYESCOMP_DATA to a folder holding MNIST/raw")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist(data_dir: Path):
    from bayescomp.data import load_dataset
    return load_dataset("mnist", data_dir)
