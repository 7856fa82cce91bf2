"""The labelled grid of the X/Y/Z plot: a plain image grid with column labels above and row labels to the left.

Matches the layout of A1111's annotated grids so plots look the same:

* the font (:func:`legend_font`: DejaVu Sans if installed, else Pillow's built-in one) is
  ``(cell_width + cell_height) // 25`` px (at least 8), black on white, with ``fontsize // 2`` between lines;
* column labels are wrapped to the cell width and centred above their column in a top band as tall as the tallest
  label plus one line spacing above and below it (no band when every column label is empty);
* row labels are wrapped to a left band ``cell_width * 3 // 4`` wide and centred in it, level with their row (no
  band when every row label is empty);
* cells are copied unchanged, ``margin`` pixels apart, and everything else stays white.

Each label is drawn through a mask clipped to its own column (or row), so text never spills onto a neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def legend_font(size: int) -> _Font:
    """DejaVu Sans when the system has it (Pillow finds it in the usual font folders; it draws Latin, Greek,
    Cyrillic and many symbols), else Pillow's built-in scalable font (Latin only)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _ink_width(font: _Font, text: str) -> int:
    """Width of the pixels ``text`` actually darkens (0 for blank text)."""
    left, _, right, _ = font.getbbox(text)
    return max(0, int(right - left))


def _break_word(font: _Font, word: str, width: int) -> list[str]:
    """Split a single word too wide for ``width`` into pieces that fit, at least one character each."""
    pieces, current = [], ""
    for char in word:
        if current and _ink_width(font, current + char) > width:
            pieces.append(current)
            current = char
        else:
            current += char
    return pieces + [current] if current else pieces


def wrap(font: _Font, text: str, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels; words wider than that are broken by characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _ink_width(font, candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        pieces = _break_word(font, word, width) if _ink_width(font, word) > width else [word]
        lines.extend(pieces[:-1])
        current = pieces[-1]
    if current:
        lines.append(current)
    return lines


def _block_height(lines: Sequence[str], line_height: int, spacing: int) -> int:
    """Height of a block of wrapped lines: each ``line_height`` tall, ``spacing`` between them."""
    return len(lines) * line_height + max(0, len(lines) - 1) * spacing


def _draw_block(canvas: Image.Image, font: _Font, lines: Sequence[str], box: tuple[int, int, int, int],
                top: int, line_height: int, spacing: int) -> None:
    """Draw ``lines`` in black, each centred horizontally in ``box``, the first one starting ``top`` px into it.

    Text goes through a mask the size of ``box``, so nothing outside the box is touched whatever the glyphs do.
    """
    x0, y0, x1, y1 = box
    if not lines or x1 <= x0 or y1 <= y0:
        return
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(mask)
    y = top
    for line in lines:
        left, _, right, _ = font.getbbox(line)
        draw.text(((x1 - x0 - (left + right)) / 2, y), line, fill=255, font=font)
        y += line_height + spacing
    canvas.paste(Image.new("RGB", mask.size, (0, 0, 0)), (x0, y0), mask)


def annotate(grid: Image.Image, cell_width: int, cell_height: int, col_labels: Sequence[str],
             row_labels: Sequence[str], margin: int = 0) -> Image.Image:
    """Return ``grid`` (``len(col_labels)`` x ``len(row_labels)`` cells) with a white legend and margins added.

    Cell ``(col, row)`` lands at ``(left + col * (cell_width + margin), top + row * (cell_height + margin))``, where
    ``top`` is the column-label band's height and ``left`` the row-label band's width (0 when those labels are all
    empty). Raises ValueError when the grid is not exactly that many cells of that size.
    """
    cols, rows = len(col_labels), len(row_labels)
    if cols < 1 or rows < 1 or cell_width < 1 or cell_height < 1 or margin < 0:
        raise ValueError(f"annotate needs at least one column and row, a positive cell size and a margin >= 0 "
                         f"(got {cols} x {rows} cells of {cell_width}x{cell_height}, margin {margin})")
    if grid.size != (cols * cell_width, rows * cell_height):
        raise ValueError(f"grid is {grid.size[0]}x{grid.size[1]} but {cols} columns x {rows} rows of "
                         f"{cell_width}x{cell_height} cells need {cols * cell_width}x{rows * cell_height}")

    fontsize = max(8, (cell_width + cell_height) // 25)
    spacing = fontsize // 2
    font = legend_font(fontsize)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (fontsize, 0)
    line_height = ascent + descent

    col_lines = [wrap(font, label, cell_width) for label in col_labels]
    left = cell_width * 3 // 4 if any(label.strip() for label in row_labels) else 0
    row_lines = [wrap(font, label, left) for label in row_labels] if left else [[] for _ in row_labels]
    tallest = max(_block_height(lines, line_height, spacing) for lines in col_lines)
    top = tallest + 2 * spacing if tallest else 0

    width = left + cols * cell_width + (cols - 1) * margin
    height = top + rows * cell_height + (rows - 1) * margin
    result = Image.new("RGB", (width, height), "white")
    source = grid.convert("RGB")
    for row in range(rows):
        for col in range(cols):
            cell = source.crop((col * cell_width, row * cell_height, (col + 1) * cell_width, (row + 1) * cell_height))
            result.paste(cell, (left + col * (cell_width + margin), top + row * (cell_height + margin)))

    for col, lines in enumerate(col_lines):
        x = left + col * (cell_width + margin)
        block = _block_height(lines, line_height, spacing)
        _draw_block(result, font, lines, (x, 0, x + cell_width, top), (top - block) // 2, line_height, spacing)
    for row, lines in enumerate(row_lines):
        y = top + row * (cell_height + margin)
        block = _block_height(lines, line_height, spacing)
        _draw_block(result, font, lines, (0, y, left, y + cell_height), (cell_height - block) // 2,
                    line_height, spacing)
    return result
