"""Image statistics on real COCO photos, edited copies of them, flat frames, and broken files."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageFilter
from tests.conftest import CocoPair
from tests.score.bad_images import awkward_images

from vlcurate.base.images import hamming, phash
from vlcurate.stats.image import (
    ImageStats,
    blur_score,
    decodability,
    exposure,
    image_stats,
    read_header,
    stats_columns,
    to_gray,
)


def _encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(coco_pairs: list[CocoPair]) -> list[tuple[CocoPair, bytes]]:
    return [(p, p.path.read_bytes()) for p in coco_pairs[:24]]


def _rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _assert_unreadable(s: ImageStats, status: str) -> None:
    assert s.status == status and s.error
    assert all(math.isnan(v) for v in (s.blur, s.brightness, s.dark_fraction, s.bright_fraction))
    assert s.phash is None


def test_header_sizes_match_coco_annotations(photos: list[tuple[CocoPair, bytes]]) -> None:
    for pair, data in photos:
        h = read_header(data)
        assert (h.status, h.width, h.height, h.format) == ("ok", pair.width, pair.height, "JPEG")
        assert h.aspect_ratio == pytest.approx(max(pair.width, pair.height) / min(pair.width, pair.height))
        assert h.bytes_per_pixel == pytest.approx(len(data) / (pair.width * pair.height))
        assert 0.05 < h.bytes_per_pixel < 1.5


def test_header_does_not_decode_truncated_files(photos: list[tuple[CocoPair, bytes]]) -> None:
    data = photos[0][1]
    truncated = data[: len(data) // 3]
    assert read_header(truncated).status == "ok"  # the header is intact...
    assert decodability(truncated)[0] == "decode_error"  # ...the pixels are not
    s = image_stats(truncated)
    _assert_unreadable(s, "decode_error")
    assert s.width == photos[0][0].width and s.bytes_per_pixel > 0  # what the header told is kept


def test_statuses_agree_with_the_scorers_decoder(photos: list[tuple[CocoPair, bytes]]) -> None:
    for name, (data, _ext, expected) in awkward_images(photos[0][1]).items():
        assert decodability(data)[0] == expected, name
        s = image_stats(data)
        assert s.status == expected, (name, s.error)
        if expected == "ok":
            assert s.phash is not None and s.blur >= 0 and 0 <= s.brightness <= 1, name
        else:
            _assert_unreadable(s, expected)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (None, "missing_image"),
        (b"", "decode_error"),
        (b"<html><body>404 not found</body></html>", "decode_error"),
        (b"\xff\xd8\xff\xe0 not really a jpeg", "decode_error"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "decode_error"),
    ],
)
def test_bad_bytes_get_a_status(data: bytes | None, status: str) -> None:
    assert read_header(data).status == status
    assert decodability(data)[0] == status
    _assert_unreadable(image_stats(data), status)


def test_decompression_bomb_is_too_large_without_decoding() -> None:
    bomb = _encode(Image.new("L", (20000, 20000)), "PNG")
    assert read_header(bomb).status == "too_large"
    _assert_unreadable(image_stats(bomb), "too_large")
    small_limit = _encode(Image.new("RGB", (400, 300)), "PNG")
    h = read_header(small_limit, max_pixels=100_000)
    assert (h.status, h.width, h.height) == ("too_large", 400, 300)
    assert image_stats(small_limit, max_pixels=100_000).status == "too_large"


def test_wrong_argument_types_raise() -> None:
    for fn in (read_header, decodability, image_stats):
        with pytest.raises(TypeError, match="image bytes"):
            fn("/path/to/photo.jpg")  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_accepted(photos: list[tuple[CocoPair, bytes]]) -> None:
    data = photos[0][1]
    expected = image_stats(data)
    assert image_stats(bytearray(data)) == expected
    assert image_stats(memoryview(data)) == expected


def test_blur_drops_a_lot_when_a_photo_is_blurred(photos: list[tuple[CocoPair, bytes]]) -> None:
    for _pair, data in photos[:10]:
        sharp = image_stats(data).blur
        blurred = image_stats(_encode(_rgb(data).filter(ImageFilter.GaussianBlur(2)), quality=95)).blur
        assert sharp > 50
        assert blurred < 0.2 * sharp, (sharp, blurred)


def test_blur_score_on_arrays() -> None:
    assert blur_score(np.full((64, 64), 128.0)) == 0.0
    checker = (np.indices((64, 64)).sum(axis=0) % 2) * 255.0
    assert blur_score(checker) > 1e5
    assert blur_score(np.zeros((2, 2))) == 0.0  # too small for a Laplacian
    with pytest.raises(ValueError, match="2-D"):
        blur_score(np.zeros((4, 4, 3)))


def test_exposure_of_black_white_and_real_photos(photos: list[tuple[CocoPair, bytes]]) -> None:
    black = image_stats(_encode(Image.new("RGB", (320, 240), (0, 0, 0)), "PNG"))
    white = image_stats(_encode(Image.new("RGB", (320, 240), (255, 255, 255)), "JPEG", quality=95))
    assert (black.brightness, black.dark_fraction, black.bright_fraction) == (0.0, 1.0, 0.0)
    assert white.brightness == pytest.approx(1.0, abs=0.01)
    assert (white.dark_fraction, white.bright_fraction) == (0.0, 1.0)
    assert black.blur == 0.0 and white.blur == pytest.approx(0.0, abs=0.01)
    for _pair, data in photos:
        s = image_stats(data)
        assert 0.15 < s.brightness < 0.85
        assert s.dark_fraction < 0.5 and s.bright_fraction < 0.5
    darker = image_stats(_encode(_rgb(photos[0][1]).point(lambda v: v // 16), quality=95))
    assert darker.dark_fraction > 0.9 and darker.brightness < 0.1
    e = exposure(to_gray(np.zeros((0, 0, 3), dtype=np.uint8)))
    assert math.isnan(e.brightness)


def test_png_has_more_bytes_per_pixel_than_jpeg(photos: list[tuple[CocoPair, bytes]]) -> None:
    img = _rgb(photos[0][1])
    png = image_stats(_encode(img, "PNG"))
    jpeg = image_stats(_encode(img, "JPEG", quality=85))
    assert png.format == "PNG" and jpeg.format == "JPEG"
    assert png.bytes_per_pixel > 2 * jpeg.bytes_per_pixel
    assert png.bytes_per_pixel < 3.0  # lossless, yet below raw RGB
    flat = image_stats(_encode(Image.new("RGB", (640, 480), (10, 120, 200)), "PNG"))
    assert flat.bytes_per_pixel < 0.05  # a flat graphic compresses to almost nothing


def test_phash_is_stable_under_resizing_and_far_between_photos(photos: list[tuple[CocoPair, bytes]]) -> None:
    hashes = []
    for _pair, data in photos:
        s = image_stats(data)
        assert s.phash is not None and 0 <= s.phash < 2**64
        img = _rgb(data)
        half = image_stats(_encode(img.resize((img.width // 2, img.height // 2)), quality=80))
        assert half.phash is not None and int(hamming(s.phash, half.phash)) <= 6
        hashes.append(s.phash)
    far = [int(hamming(a, b)) for a, b in itertools.combinations(hashes, 2)]
    assert min(far) > 12 and np.median(far) > 24


def test_phash_packs_imagehash_bits(photos: list[tuple[CocoPair, bytes]]) -> None:
    img = _rgb(photos[1][1])
    h = phash(img)
    assert f"{h:016x}" == str(imagehash.phash(img))
    assert phash(np.asarray(img)) == h
    arr = np.array([h, h ^ 1, h ^ 0xFF, ~h & (2**64 - 1)], dtype=np.uint64)
    assert hamming(arr, h).tolist() == [0, 1, 8, 64]
    assert hamming(arr[::2], h).tolist() == [0, 8]  # strided input


def test_tiny_and_odd_images(tmp_path: Path) -> None:
    for size in [(1, 1), (2, 3), (3, 1000)]:
        s = image_stats(_encode(Image.new("RGB", size, (90, 90, 90)), "PNG"))
        assert s.status == "ok" and s.phash is not None and (s.width, s.height) == size
        assert s.blur == 0.0 and s.aspect_ratio == max(size) / min(size)


def test_stats_columns(photos: list[tuple[CocoPair, bytes]]) -> None:
    stats = [image_stats(photos[0][1]), image_stats(None), image_stats(b"junk")]
    cols = stats_columns(stats)
    assert cols["status"].tolist() == ["ok", "missing_image", "decode_error"]
    assert cols["phash"].dtype == np.uint64 and cols["phash_valid"].tolist() == [True, False, False]
    assert cols["phash"][0] == stats[0].phash
    assert cols["width"].tolist()[1:] == [-1, -1] and np.isnan(cols["blur"][1:]).all()
