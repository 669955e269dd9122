"""Figures are byte-identical when drawn again from the same data: no creation date in PNG or PDF,
so rerendering unchanged results leaves the git tree clean."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from reproduce import table2
from reproduce.figures import save_figures

REPO = Path(__file__).resolve().parent.parent


def _draw_twice(tmp_path: Path, monkeypatch, draw) -> tuple[Path, Path]:
    """draw(out_dir) into two folders at two different 'dates' (SOURCE_DATE_EPOCH, which matplotlib reads)."""
    folders = tmp_path / "a", tmp_path / "b"
    for folder, date in zip(folders, ("0", "2000000000")):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", date)
        draw(folder)
    return folders


def _same_files(a: Path, b: Path, suffixes: tuple[str, ...] = (".png", ".pdf")) -> list[str]:
    names = sorted(p.name for p in a.iterdir() if p.suffix in suffixes)
    assert names and names == sorted(p.name for p in b.iterdir() if p.suffix in suffixes)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between two renderings"
    return names


def test_a_figure_saved_twice_is_byte_identical(tmp_path, monkeypatch):
    def draw(out: Path) -> None:
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [3, 1, 2], label="α")
        ax.legend()
        save_figures(fig, out, "curve")

    assert _same_files(*_draw_twice(tmp_path, monkeypatch, draw)) == ["curve.pdf", "curve.png"]


def test_table2_no_measure_rerenders_the_same_bytes(tmp_path, monkeypatch):
    if not (REPO / "results" / "bench").is_dir():
        pytest.skip("no recorded results/bench/ in this checkout")
    a, b = _draw_twice(tmp_path, monkeypatch, lambda out: table2.render(REPO / "results", out))
    assert _same_files(a, b, (".png", ".pdf", ".md")) == ["table2.md", "table2_speedup.pdf", "table2_speedup.png"]
