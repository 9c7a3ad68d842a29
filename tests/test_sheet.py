"""Tests for alctl.annotate.sheet: grid geometry, exact (upscaled) pixels, captions, atomic PNG output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alctl.annotate.sheet import BACKGROUND, PAD, contact_sheet, render_contact_sheet, sheet_geometry


def _digits(n: int) -> np.ndarray:
    """n of scikit-learn's digits as uint8 [n, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:n]
    return np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None]


def test_png_grid_size_and_cell_pixels(tmp_path: Path) -> None:
    images = _digits(23)
    path = tmp_path / "out" / "sheet.png"
    contact_sheet(torch.from_numpy(images), [f"#{i}" for i in range(23)], path, columns=10, cell=96)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["sheet.png"]  # no temp file left
    sheet = Image.open(path)
    assert sheet.format == "PNG" and sheet.mode == "RGB"
    geo = sheet_geometry(23, [f"#{i}" for i in range(23)], columns=10, cell=96)
    assert (geo.columns, geo.rows, geo.column_width) == (10, 3, 96)  # short captions: columns as wide as a cell
    assert sheet.size == (geo.width, geo.height) and geo.width == PAD + 10 * (96 + PAD)
    assert geo.height == PAD + 3 * (96 + geo.caption_height + PAD) and geo.caption_height > 10
    pixels = np.asarray(sheet)
    for i in (0, 9, 10, 22):
        x, y = geo.cell_origin(i)
        expected = np.repeat(np.repeat(images[i, 0], 12, axis=0), 12, axis=1)  # nearest 8 -> 96
        for c in range(3):
            assert np.array_equal(pixels[y : y + 96, x : x + 96, c], expected)
        caption = pixels[y + 96 : y + 96 + geo.caption_height, x : x + 96]
        assert caption.min() < 100  # dark text drawn under the image
    assert np.all(pixels[:PAD - 1] == BACKGROUND) and np.all(pixels[:, : PAD - 1] == BACKGROUND)
    x, y = geo.cell_origin(22)  # row 3 has 3 images; the rest of it is white
    assert np.all(pixels[y:, x + 96 + PAD :] == BACKGROUND)


def test_rgb_non_square_fits_the_cell_centred() -> None:
    image = np.zeros((1, 3, 4, 8), dtype=np.uint8)
    image[0, 0, :, :4] = 255  # left half red, right half blue
    image[0, 2, :, 4:] = 255
    sheet = np.asarray(render_contact_sheet(image, ["rgb"], cell=48))
    geo = sheet_geometry(1, ["rgb"], cell=48)
    x, y = geo.cell_origin(0)
    region = sheet[y + 12 : y + 36, x : x + 48]  # 8 x 4 scaled by 6 = 48 x 24, centred vertically
    assert np.all(region[:, :24] == (255, 0, 0)) and np.all(region[:, 24:] == (0, 0, 255))
    assert np.all(sheet[y : y + 10, x : x + 48] == BACKGROUND)  # above the picture: white


def test_long_and_multiline_captions_widen_and_heighten() -> None:
    ids = [str(2**62 + 12345 * i) for i in range(4)]  # 19-digit sample ids
    short = sheet_geometry(4, ["x"] * 4, columns=4, cell=32)
    wide = sheet_geometry(4, ids, columns=4, cell=32)
    tall = sheet_geometry(4, [f"{i}\npred 3 (0.91)" for i in ids], columns=4, cell=32)
    assert short.column_width == 32 < wide.column_width and wide.width > short.width
    assert tall.caption_height == wide.caption_height + wide.line_height
    sheet = render_contact_sheet(_digits(4), ids, columns=4, cell=32)
    assert sheet.size == (wide.width, wide.height)


def test_numpy_and_torch_inputs_agree_and_overwrite(tmp_path: Path) -> None:
    images = _digits(5)
    a = np.asarray(render_contact_sheet(images, list("abcde"), columns=3, cell=16))
    b = np.asarray(render_contact_sheet(torch.from_numpy(images), list("abcde"), columns=3, cell=16))
    assert np.array_equal(a, b)
    path = tmp_path / "s.png"
    path.write_bytes(b"old")
    contact_sheet(images, list("abcde"), path, columns=3, cell=16)
    assert np.array_equal(np.asarray(Image.open(path)), a)


def test_bad_inputs_raise() -> None:
    images = _digits(3)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        render_contact_sheet(images, ["a", "b"])
    with pytest.raises(ValueError, match="C = 1 or 3"):
        render_contact_sheet(np.zeros((2, 2, 8, 8), dtype=np.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="uint8"):
        render_contact_sheet(images.astype(np.float32), ["a", "b", "c"])
    with pytest.raises(ValueError, match="no images"):
        render_contact_sheet(images[:0], [])
