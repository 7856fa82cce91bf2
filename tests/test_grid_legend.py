"""The labelled X/Y/Z grid: cells copied pixel-exact to their offsets, labels drawn only over their own column/row.

Expected positions come from the layout rules (A1111's ``draw_grid_annotations``), never from the code under test:
the left band is ``cell_width * 3 // 4`` wide, cells sit ``margin`` apart, and the top band's height is whatever
remains of the result's height once the cells and margins are accounted for (so a wrong offset shows up as
cells that do not match).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from modules import grid_legend, images

WHITE = (255, 255, 255)


def noise_cells(count: int, width: int, height: int, seed: int = 0) -> list[Image.Image]:
    """Random-noise cells (no two alike), with every channel kept below 250 so a cell never looks like margin."""
    rng = random.Random(seed)
    return [Image.frombytes("RGB", (width, height), bytes(rng.randrange(250) for _ in range(width * height * 3)))
            for _ in range(count)]


def solid_cells(count: int, width: int, height: int) -> list[Image.Image]:
    """Distinct mid-tone solid colours (none white, none dark enough to pass for text)."""
    return [Image.new("RGB", (width, height), (150 + 7 * i % 90, 200 - 5 * i % 60, 160 + 11 * i % 80))
            for i in range(count)]


def make_grid(cols: int, rows: int, width: int, height: int, noise: bool = True) -> tuple[Image.Image, list]:
    cells = noise_cells(cols * rows, width, height) if noise else solid_cells(cols * rows, width, height)
    return images.image_grid(cells, rows=rows), cells


def band_top(result: Image.Image, rows: int, height: int, margin: int) -> int:
    """The top band's height, from the result's height minus the cells and the margins between them."""
    return result.height - (rows * height + (rows - 1) * margin)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def non_white(region: np.ndarray) -> np.ndarray:
    return (region != 255).any(axis=2)


def dark(region: np.ndarray) -> np.ndarray:
    return (region < 128).all(axis=2)


def check_cells(result: Image.Image, cells: list, cols: int, width: int, height: int, left: int, top: int,
                margin: int) -> None:
    for index, cell in enumerate(cells):
        row, col = divmod(index, cols)
        x, y = left + col * (width + margin), top + row * (height + margin)
        got = np.asarray(result.crop((x, y, x + width, y + height)))
        assert np.array_equal(got, np.asarray(cell)), f"cell {index} (col {col}, row {row}) not at ({x}, {y})"


def margin_mask(result: Image.Image, cols: int, rows: int, width: int, height: int, left: int, top: int,
                margin: int) -> np.ndarray:
    """True over the pixels of the cell area that belong to no cell (the gaps between cells)."""
    mask = np.ones((result.height, result.width), dtype=bool)
    mask[:top, :] = False
    mask[:, :left] = False
    for row in range(rows):
        for col in range(cols):
            x, y = left + col * (width + margin), top + row * (height + margin)
            mask[y:y + height, x:x + width] = False
    return mask


@pytest.mark.parametrize("cols,rows,margin", [(1, 1, 0), (3, 2, 0), (2, 3, 5), (4, 1, 12), (1, 4, 3), (3, 3, 1)])
@pytest.mark.parametrize("labelled", [False, True])
def test_cells_pixel_exact_at_offsets(cols: int, rows: int, margin: int, labelled: bool) -> None:
    width, height = 64, 48
    grid, cells = make_grid(cols, rows, width, height)
    col_labels = [f"column {c}" if labelled else "" for c in range(cols)]
    row_labels = [f"row {r}" if labelled else "" for r in range(rows)]
    result = grid_legend.annotate(grid, width, height, col_labels, row_labels, margin=margin)
    assert result.mode == "RGB"
    left = width * 3 // 4 if labelled else 0
    assert result.width == left + cols * width + (cols - 1) * margin
    top = band_top(result, rows, height, margin)
    assert (top > 0) if labelled else (top == 0)
    check_cells(result, cells, cols, width, height, left, top, margin)
    gaps = margin_mask(result, cols, rows, width, height, left, top, margin)
    assert (pixels(result)[gaps] == 255).all(), "margin between cells is not white"


def test_no_labels_is_just_cells_with_white_margins() -> None:
    width, height, margin = 40, 30, 4
    grid, cells = make_grid(3, 2, width, height, noise=False)
    result = grid_legend.annotate(grid, width, height, ["", "", ""], ["", ""], margin=margin)
    assert result.size == (3 * width + 2 * margin, 2 * height + margin)
    expected = Image.new("RGB", result.size, WHITE)
    for index, cell in enumerate(cells):
        row, col = divmod(index, 3)
        expected.paste(cell, (col * (width + margin), row * (height + margin)))
    assert np.array_equal(np.asarray(result), np.asarray(expected))
    assert grid_legend.annotate(grid, width, height, ["", "", ""], ["", ""]).tobytes() == grid.tobytes()


def test_top_band_height_for_one_line_labels() -> None:
    width, height = 200, 150
    fontsize = (width + height) // 25
    font = grid_legend.legend_font(fontsize)
    line_height = sum(font.getmetrics())
    grid, _ = make_grid(2, 1, width, height)
    result = grid_legend.annotate(grid, width, height, ["cat", "dog"], [""])
    assert band_top(result, 1, height, 0) == line_height + 2 * (fontsize // 2)


@pytest.mark.parametrize("margin", [0, 7])
def test_column_labels_stay_in_their_column(margin: int) -> None:
    cols, width, height = 3, 120, 90
    grid, _ = make_grid(cols, 2, width, height)
    left = width * 3 // 4
    labels = ["alpha", "a label with a few words", "Ünïcödé ß → 漢字"]
    for only in range(cols):
        col_labels = [label if c == only else "" for c, label in enumerate(labels)]
        result = grid_legend.annotate(grid, width, height, col_labels, ["x", "y"], margin=margin)
        top = band_top(result, 2, height, margin)
        band = pixels(result)[:top]
        x0 = left + only * (width + margin)
        assert dark(band[:, x0:x0 + width]).any(), f"label {only} drew nothing"
        outside = non_white(band).copy()
        outside[:, x0:x0 + width] = False
        assert not outside.any(), f"label {only} drew outside its column"
    result = grid_legend.annotate(grid, width, height, labels, ["x", "y"], margin=margin)
    band = pixels(result)[:band_top(result, 2, height, margin)]
    spans = np.zeros(result.width, dtype=bool)
    for c in range(cols):
        x0 = left + c * (width + margin)
        spans[x0:x0 + width] = True
        assert dark(band[:, x0:x0 + width]).any()
    assert not non_white(band)[:, ~spans].any(), "text in the top band outside every column"


@pytest.mark.parametrize("margin", [0, 9])
def test_row_labels_stay_in_their_row(margin: int) -> None:
    rows, width, height = 3, 100, 80
    grid, _ = make_grid(2, rows, width, height)
    left = width * 3 // 4
    labels = ["first", "second row label", "3"]
    for only in range(rows):
        row_labels = [label if r == only else "" for r, label in enumerate(labels)]
        result = grid_legend.annotate(grid, width, height, ["", ""], row_labels, margin=margin)
        assert band_top(result, rows, height, margin) == 0
        band = pixels(result)[:, :left]
        y0 = only * (height + margin)
        assert dark(band[y0:y0 + height]).any(), f"row label {only} drew nothing"
        outside = non_white(band).copy()
        outside[y0:y0 + height] = False
        assert not outside.any(), f"row label {only} drew outside its row"
    result = grid_legend.annotate(grid, width, height, ["a", "b"], labels, margin=margin)
    top = band_top(result, rows, height, margin)
    band = pixels(result)[:, :left]
    assert not non_white(band[:top]).any(), "row labels reached the top band"
    for r in range(rows):
        y0 = top + r * (height + margin)
        assert dark(band[y0:y0 + height]).any()
    spans = np.zeros(result.height, dtype=bool)
    for r in range(rows):
        y0 = top + r * (height + margin)
        spans[y0:y0 + height] = True
    assert not non_white(band)[~spans].any(), "row-label text between rows"


def test_row_label_centred_in_band() -> None:
    width, height = 160, 120
    grid, _ = make_grid(1, 1, width, height)
    result = grid_legend.annotate(grid, width, height, [""], ["mid"])
    ys, xs = np.nonzero(dark(pixels(result)[:, :width * 3 // 4]))
    assert abs((xs.min() + xs.max()) / 2 - (width * 3 // 4) / 2) <= 2
    assert abs((ys.min() + ys.max()) / 2 - height / 2) <= height / 6


@pytest.mark.parametrize("long_label", [
    "a very long column label that cannot possibly fit on a single line of this narrow cell",
    "Supercalifragilisticexpialidocious_without_any_spaces_at_all_0123456789",
])
def test_long_label_wraps_within_its_column(long_label: str) -> None:
    cols, width, height, margin = 3, 96, 96, 4
    grid, cells = make_grid(cols, 1, width, height)
    short = grid_legend.annotate(grid, width, height, ["", "short", ""], ["r"], margin=margin)
    long = grid_legend.annotate(grid, width, height, ["", long_label, ""], ["r"], margin=margin)
    short_top, long_top = band_top(short, 1, height, margin), band_top(long, 1, height, margin)
    assert long_top > short_top
    fontsize = (width + height) // 25
    line_height = sum(grid_legend.legend_font(fontsize).getmetrics())
    assert long_top >= 2 * line_height + 3 * (fontsize // 2), "long label did not wrap onto several lines"
    left = width * 3 // 4
    band = pixels(long)[:long_top]
    x0 = left + width + margin
    outside = non_white(band).copy()
    outside[:, x0:x0 + width] = False
    assert not outside.any(), "long label drew beyond its column"
    assert dark(band[:, x0:x0 + width]).any()
    check_cells(long, cells, cols, width, height, left, long_top, margin)


def test_small_cells_use_minimum_font_and_still_draw() -> None:
    width, height = 24, 24
    grid, cells = make_grid(2, 2, width, height)
    result = grid_legend.annotate(grid, width, height, ["a", "b"], ["c", "d"], margin=2)
    left = width * 3 // 4
    top = band_top(result, 2, height, 2)
    assert top == sum(grid_legend.legend_font(8).getmetrics()) + 2 * 4
    check_cells(result, cells, 2, width, height, left, top, 2)
    assert dark(pixels(result)[:top]).any() and dark(pixels(result)[top:, :left]).any()


@pytest.mark.parametrize("size", [(100, 50), (120, 40), (119, 50), (120, 51), (60, 100)])
def test_wrong_grid_size_raises(size: tuple[int, int]) -> None:
    grid = Image.new("RGB", size, WHITE)
    with pytest.raises(ValueError, match="grid"):
        grid_legend.annotate(grid, 40, 25, ["a", "b", "c"], ["x", "y"])


def test_right_grid_size_does_not_raise() -> None:
    grid = Image.new("RGB", (120, 50), WHITE)
    assert grid_legend.annotate(grid, 40, 25, ["a", "b", "c"], ["x", "y"]).width == 30 + 120


def test_a_greek_or_cyrillic_label_is_drawn_as_glyphs_not_boxes() -> None:
    """With DejaVu Sans (installed on the CI machine) Greek and Cyrillic words draw their letters: not the boxes
    that as many characters no font has draw. Without it the built-in font draws boxes, but still draws."""
    grid, _ = make_grid(3, 1, 200, 150)
    labels = ["λόγος", "слово", "\U000f0000" * 5]  # Greek, Cyrillic, five private-use characters no font has
    result = pixels(grid_legend.annotate(grid, 200, 150, labels, [""]))
    top = result.shape[0] - 150
    drawn = [result[:top, i * 200:(i + 1) * 200] for i in range(3)]
    assert all(non_white(d).any() for d in drawn)
    if "dejavu" in str(getattr(grid_legend.legend_font(20), "path", "")).lower():
        assert not np.array_equal(drawn[0], drawn[2]) and not np.array_equal(drawn[1], drawn[2])
