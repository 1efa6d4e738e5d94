"""The PNG writer: banded, parallel, incrementally reusable; checked by decoding it."""

from __future__ import annotations

import io
import random
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from agent.computer.screen import (
    BAND_ROWS,
    adler32_combine,
    assemble_png,
    encode_bands_bgrx,
    encode_png,
    target_size,
)
from agent.errors import BadRequest


def noisy_rgb(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    flat = bytes([200, 220, 240]) * (width * height)
    data = bytearray(flat)
    for _ in range(width * height // 20):  # some noise, some flat areas
        i = rng.randrange(width * height) * 3
        data[i:i + 3] = bytes(rng.randrange(256) for _ in range(3))
    return bytes(data)


def to_bgrx(rgb: bytes) -> bytes:
    out = bytearray()
    for i in range(0, len(rgb), 3):
        r, g, b = rgb[i:i + 3]
        out += bytes([b, g, r, 0])
    return bytes(out)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 3), (130, BAND_ROWS),
                                               (97, BAND_ROWS * 3 + 5)])
@pytest.mark.parametrize("parallel", [False, True])
def test_png_decodes_to_the_same_pixels(width: int, height: int, parallel: bool) -> None:
    rgb = noisy_rgb(width, height, width + height)
    with ThreadPoolExecutor(2) as pool:
        data = encode_png(rgb, width, height, pool if parallel else None)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (width, height)
    assert image.tobytes() == rgb


def test_bands_from_bgrx_can_be_replaced_one_by_one() -> None:
    width, height = 50, BAND_ROWS * 2 + 10
    rgb = bytearray(noisy_rgb(width, height, 1))
    with ThreadPoolExecutor(2) as pool:
        bands = encode_bands_bgrx(to_bgrx(bytes(rgb)), width, height, pool)
        assert len(bands) == 3
        # repaint rows of the middle band only, and re-encode just that band
        for y in range(BAND_ROWS, 2 * BAND_ROWS):
            rgb[y * width * 3:(y + 1) * width * 3] = bytes([9, 8, 7]) * width
        middle = bytes(rgb[BAND_ROWS * width * 3:2 * BAND_ROWS * width * 3])
        bands[1:2] = encode_bands_bgrx(to_bgrx(middle), width, BAND_ROWS, pool, BAND_ROWS,
                                       height)
    image = Image.open(io.BytesIO(assemble_png(bands, width, height)))
    assert image.tobytes() == bytes(rgb)


def test_adler32_combine_matches_zlib() -> None:
    rng = random.Random(3)
    for _ in range(50):
        a = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
        b = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 70000)))
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


def test_target_size_fits_the_box_and_never_upscales() -> None:
    assert target_size((1920, 1080), None, None) is None
    assert target_size((1920, 1080), 1280, 1280) == (1280, 720)
    assert target_size((1920, 1080), 1920, 540) == (960, 540)
    assert target_size((100, 50), 400, 400) is None
    with pytest.raises(BadRequest):
        target_size((100, 50), 0, 10)
