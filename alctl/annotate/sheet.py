"""Contact sheets: uint8 images [n, C, H, W] in a captioned grid, written as one PNG for people to look at.

Each image is scaled to fit a `cell` x `cell` square (nearest neighbour when enlarging, so
pixels stay crisp; antialiased when shrinking) and placed top-centre in its column, a thin grey
frame just outside it; its caption (one or more lines, e.g. the sample id and a prediction)
is drawn centred beneath it in black on white. A column is as wide as the cell or as its widest
caption line, whichever is larger, so sample ids are never cut.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from alctl.store import atomic_write_bytes

PAD = 8  # pixels around the sheet and between cells
CAPTION_GAP = 4  # pixels between an image and its caption
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
FRAME = (200, 200, 200)
ELLIPSIS = "\u2026"

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class SheetGeometry:
    """Pixel layout of a contact sheet: grid size, column / row pitch and the caption band."""

    columns: int  # columns used (at most the number of images)
    rows: int
    cell: int  # side of the square each image is fitted into
    column_width: int  # >= cell; wide enough for the widest caption line
    caption_height: int  # caption band below each cell, CAPTION_GAP included
    line_height: int
    width: int
    height: int

    def cell_origin(self, index: int) -> tuple[int, int]:
        """(x, y) of the top-left corner of image `index`'s cell square."""
        row, col = divmod(index, self.columns)
        x = PAD + col * (self.column_width + PAD) + (self.column_width - self.cell) // 2
        y = PAD + row * (self.cell + self.caption_height + PAD)
        return x, y


@lru_cache(maxsize=8)
def _font(size: int) -> _Font:
    """Pillow's default font at `size` pixels (the fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError, AttributeError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _line_height(font: _Font) -> int:
    """Pixels from one caption line to the next."""
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return ascent + descent + 2
    top, bottom = font.getbbox("Ag0|")[1::2]
    return int(bottom - top) + 4


def _font_size(cell: int) -> int:
    """Caption font size (pixels) for a cell size: readable at small cells, modest at large ones."""
    return int(min(18, max(12, cell // 7)))


def _as_array(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 [n, C, H, W] as a NumPy array; ValueError for any other shape or dtype."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"contact sheet: images must be [n, C, H, W] with C = 1 or 3, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"contact sheet: images must be uint8, got {array.dtype}")
    return array


def _fit(text: str, font: _Font, limit: float) -> str:
    """`text` shortened with an ellipsis until it is at most `limit` pixels wide."""
    if font.getlength(text) <= limit:
        return text
    while text and font.getlength(text + ELLIPSIS) > limit:
        text = text[:-1]
    return text + ELLIPSIS


def _lines(captions: list[str], font: _Font, limit: float) -> list[list[str]]:
    """Each caption split into lines, each line fitted to `limit` pixels."""
    return [[_fit(line, font, limit) for line in str(caption).splitlines() or [""]] for caption in captions]


def sheet_geometry(n: int, captions: list[str], columns: int = 10, cell: int = 96) -> SheetGeometry:
    """The layout `render_contact_sheet` uses for `n` images with these captions."""
    if n < 1:
        raise ValueError("contact sheet: no images to lay out")
    if columns < 1 or cell < 1:
        raise ValueError(f"contact sheet: columns and cell must be positive, got {columns} and {cell}")
    font = _font(_font_size(cell))
    lines = _lines(captions, font, max(2.5 * cell, 200))
    line_height = _line_height(font)
    widest = max((font.getlength(line) for caption in lines for line in caption), default=0.0)
    column_width = max(cell, math.ceil(widest) + 6)  # a little air between neighbouring captions
    caption_height = CAPTION_GAP + line_height * max(len(caption) for caption in lines)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    return SheetGeometry(
        columns=cols,
        rows=rows,
        cell=cell,
        column_width=column_width,
        caption_height=caption_height,
        line_height=line_height,
        width=PAD + cols * (column_width + PAD),
        height=PAD + rows * (cell + caption_height + PAD),
    )


def _tile(image: np.ndarray, cell: int) -> Image.Image:
    """One uint8 [C, H, W] image as an RGB Pillow image whose longer side is `cell` pixels."""
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    tile = Image.fromarray(hwc[:, :, 0], mode="L") if hwc.shape[2] == 1 else Image.fromarray(hwc, mode="RGB")
    h, w = hwc.shape[:2]
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return tile.resize(size, resample).convert("RGB")


def render_contact_sheet(
    images: torch.Tensor | np.ndarray, captions: list[str], columns: int = 10, cell: int = 96
) -> Image.Image:
    """The contact sheet of uint8 images [n, C, H, W] (C = 1 or 3) with one caption each, as an RGB image."""
    array = _as_array(images)
    if len(captions) != array.shape[0]:
        raise ValueError(f"contact sheet: {array.shape[0]} images but {len(captions)} captions")
    geo = sheet_geometry(array.shape[0], captions, columns, cell)
    font = _font(_font_size(cell))
    lines = _lines(captions, font, max(2.5 * cell, 200))
    sheet = Image.new("RGB", (geo.width, geo.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i in range(array.shape[0]):
        x, y = geo.cell_origin(i)
        tile = _tile(array[i], cell)
        left = x + (cell - tile.width) // 2
        top = y + (cell - tile.height) // 2
        draw.rectangle((left - 1, top - 1, left + tile.width, top + tile.height), outline=FRAME)
        sheet.paste(tile, (left, top))
        for k, line in enumerate(lines[i]):
            text_x = round(x + (cell - font.getlength(line)) / 2)
            draw.text((text_x, y + cell + CAPTION_GAP + k * geo.line_height), line, fill=TEXT, font=font)
    return sheet


def contact_sheet(
    images: torch.Tensor | np.ndarray, captions: list[str], path: Path, columns: int = 10, cell: int = 96
) -> None:
    """Write the contact sheet of uint8 images [n, C, H, W] with captions to `path` as a PNG, atomically."""
    sheet = render_contact_sheet(images, captions, columns=columns, cell=cell)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=False)
    atomic_write_bytes(Path(path), buffer.getvalue())
