"""Tests for catalog.imaging. All images are generated in memory."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import numpy as np
import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from catalog.imaging import (
    DecodedImage,
    ImageMetadata,
    ImageRejected,
    decode_image,
    make_thumbnail,
)

MAX = 50_000_000
RED = (220, 30, 40)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def close_to(px, expected, tol=12):
    return all(abs(a - b) <= tol for a, b in zip(px, expected))


def rational(x) -> IFDRational:
    f = Fraction(x).limit_denominator(10_000)
    return IFDRational(f.numerator, f.denominator)


def dms(deg: float) -> tuple:
    d = int(deg)
    m = int((deg - d) * 60)
    s = round((deg - d - m / 60) * 3600, 3)
    return (rational(d), rational(m), rational(s))


def jpeg_with_exif(size=(40, 20), *, orientation=None, ifd0=None, exif_ifd=None, gps=None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    for k, v in (ifd0 or {}).items():
        exif[k] = v
    if exif_ifd:
        exif.get_ifd(ExifTags.IFD.Exif).update(exif_ifd)
    if gps:
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps)
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste(RED, (0, 0, 10, 10))  # marker in the stored top-left corner
    return encode(im, "JPEG", exif=exif, quality=95)


def png_header(width: int, height: int) -> bytes:
    """A PNG with only signature + IHDR + IEND: claims a size, has no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------
# formats


@pytest.mark.parametrize(
    ("fmt", "mode", "kw"),
    [
        ("JPEG", "RGB", {"quality": 95}),
        ("JPEG", "L", {}),
        ("JPEG", "CMYK", {}),
        ("PNG", "RGB", {}),
        ("WEBP", "RGB", {"quality": 95}),
        ("GIF", "RGB", {}),
        ("BMP", "RGB", {}),
        ("TIFF", "RGB", {}),
        ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ],
)
def test_decodes_formats(fmt, mode, kw):
    im = Image.new("RGB", (64, 48), RED).convert(mode)
    result = decode_image(encode(im, fmt, **kw), max_pixels=MAX)
    assert isinstance(result, DecodedImage)
    assert isinstance(result.metadata, ImageMetadata)
    assert result.metadata.format == fmt
    assert (result.metadata.width, result.metadata.height) == (64, 48)
    assert result.image.mode == "RGB"
    assert result.image.size == (64, 48)
    expected = Image.new("RGB", (1, 1), RED).convert(mode).convert("RGB").getpixel((0, 0))
    assert close_to(result.image.getpixel((32, 24)), expected, tol=20)
    assert result.metadata.taken_at is None
    assert result.metadata.latitude is None and result.metadata.longitude is None


def test_decodes_heif():
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("libheif built without a HEVC encoder")
    data = encode(Image.new("RGB", (64, 48), RED), "HEIF", quality=95)
    result = decode_image(data, max_pixels=MAX)
    assert result.metadata.format == "HEIF"
    assert (result.metadata.width, result.metadata.height) == (64, 48)
    assert result.image.mode == "RGB" and result.image.size == (64, 48)
    assert close_to(result.image.getpixel((32, 24)), RED, tol=25)


def test_heif_orientation_applied_once():
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("libheif built without a HEVC encoder")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    src = Image.new("RGB", (40, 20), (0, 0, 255))
    src.paste(RED, (0, 0, 10, 10))
    # HEIF orientation lives in the irot/imir boxes (libheif applies them and
    # pillow_heif resets EXIF orientation to 1). pillow_heif writes irot from
    # EXIF given as bytes, like real phone files carry both.
    data = encode(src, "HEIF", exif=exif.tobytes(), quality=95)
    result = decode_image(data, max_pixels=MAX)
    assert (result.metadata.width, result.metadata.height) == (20, 40)
    assert result.image.size == (20, 40)
    assert close_to(result.image.getpixel((17, 2)), RED, tol=40)


def test_mpo_reported_as_jpeg_and_drafted():
    src = Image.new("RGB", (400, 200), RED)
    buf = io.BytesIO()
    src.save(buf, "MPO", save_all=True, append_images=[src])
    result = decode_image(buf.getvalue(), max_pixels=MAX, min_side=50)
    assert result.metadata.format == "JPEG"
    assert (result.metadata.width, result.metadata.height) == (400, 200)
    assert result.image.size == (100, 50)


def test_gif_first_frame():
    frames = [Image.new("RGB", (30, 20), c) for c in (RED, (0, 200, 0), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    result = decode_image(buf.getvalue(), max_pixels=MAX)
    assert result.metadata.format == "GIF"
    assert close_to(result.image.getpixel((5, 5)), RED, tol=20)


def test_palette_with_transparency_composited_on_white():
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0, *RED] + [0] * 762)
    im.paste(1, (0, 0, 10, 20))  # left half opaque red, right half index 0
    for fmt in ("PNG", "GIF"):
        result = decode_image(encode(im, fmt, transparency=0), max_pixels=MAX)
        assert result.image.mode == "RGB"
        assert result.image.getpixel((15, 10)) == (255, 255, 255), fmt
        assert close_to(result.image.getpixel((5, 10)), RED, tol=20), fmt


def test_rgba_composited_on_white():
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 128))
    result = decode_image(encode(im, "PNG"), max_pixels=MAX)
    assert close_to(result.image.getpixel((5, 5)), (255, 127, 127), tol=2)


def test_la_and_webp_alpha_composited_on_white():
    la = Image.new("LA", (10, 10), (0, 0))
    assert decode_image(encode(la, "PNG"), max_pixels=MAX).image.getpixel((1, 1)) == (255, 255, 255)
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    webp = decode_image(encode(rgba, "WEBP", lossless=True), max_pixels=MAX)
    assert webp.image.getpixel((1, 1)) == (255, 255, 255)


def test_16bit_grayscale_png_is_scaled_not_white():
    a = np.full((16, 16), 32768, dtype=np.uint16)
    a[:, :8] = 4096
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    result = decode_image(data, max_pixels=MAX)
    assert result.image.mode == "RGB"
    assert close_to(result.image.getpixel((12, 8)), (128, 128, 128), tol=2)
    assert close_to(result.image.getpixel((2, 8)), (16, 16, 16), tol=2)


def test_16bit_tiff_is_scaled():
    a = np.full((16, 16), 65535, dtype=np.uint16)
    a[:, :8] = 0
    im = Image.fromarray(a)
    result = decode_image(encode(im, "TIFF"), max_pixels=MAX)
    assert result.image.getpixel((12, 8)) == (255, 255, 255)
    assert result.image.getpixel((2, 8)) == (0, 0, 0)


# --------------------------------------------------------------------------
# EXIF


def test_orientation_6_swaps_dimensions_and_rotates_pixels():
    result = decode_image(jpeg_with_exif((40, 20), orientation=6), max_pixels=MAX)
    assert (result.metadata.width, result.metadata.height) == (20, 40)
    assert result.image.size == (20, 40)
    # Orientation 6 = rotate 90° clockwise to display: stored top-left -> top-right.
    assert close_to(result.image.getpixel((17, 2)), RED, tol=40)
    assert not close_to(result.image.getpixel((2, 2)), RED, tol=40)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_orientation_without_swap(orientation):
    result = decode_image(jpeg_with_exif((40, 20), orientation=orientation), max_pixels=MAX)
    assert (result.metadata.width, result.metadata.height) == (40, 20)
    assert result.image.size == (40, 20)


def test_taken_at_with_offset():
    data = jpeg_with_exif(
        exif_ifd={
            ExifTags.Base.DateTimeOriginal: "2023:05:01 10:20:30",
            ExifTags.Base.OffsetTimeOriginal: "+09:00",
        }
    )
    taken = decode_image(data, max_pixels=MAX).metadata.taken_at
    assert taken == datetime(2023, 5, 1, 10, 20, 30, tzinfo=timezone(timedelta(hours=9)))
    assert taken.utcoffset() == timedelta(hours=9)
    assert taken == datetime(2023, 5, 1, 1, 20, 30, tzinfo=timezone.utc)


def test_taken_at_without_offset_is_utc():
    data = jpeg_with_exif(exif_ifd={ExifTags.Base.DateTimeOriginal: "2021:12:31 23:59:59"})
    taken = decode_image(data, max_pixels=MAX).metadata.taken_at
    assert taken == datetime(2021, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    assert taken.utcoffset() == timedelta(0)


def test_taken_at_falls_back_to_datetime_and_ignores_blank_values():
    data = jpeg_with_exif(
        ifd0={ExifTags.Base.DateTime: "2020:01:02 03:04:05"},
        exif_ifd={ExifTags.Base.DateTimeOriginal: "0000:00:00 00:00:00"},
    )
    taken = decode_image(data, max_pixels=MAX).metadata.taken_at
    assert taken == datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    blank = jpeg_with_exif(exif_ifd={ExifTags.Base.DateTimeOriginal: "    :  :     :  :  "})
    assert decode_image(blank, max_pixels=MAX).metadata.taken_at is None


def test_negative_offset():
    data = jpeg_with_exif(
        exif_ifd={
            ExifTags.Base.DateTimeOriginal: "2023:05:01 10:20:30",
            ExifTags.Base.OffsetTimeOriginal: "-05:30",
        }
    )
    taken = decode_image(data, max_pixels=MAX).metadata.taken_at
    assert taken.utcoffset() == -timedelta(hours=5, minutes=30)


def gps_ifd(lat, lat_ref, lon, lon_ref):
    return {
        ExifTags.GPS.GPSLatitudeRef: lat_ref,
        ExifTags.GPS.GPSLatitude: lat,
        ExifTags.GPS.GPSLongitudeRef: lon_ref,
        ExifTags.GPS.GPSLongitude: lon,
    }


def test_gps_south_west_negative():
    data = jpeg_with_exif(gps=gps_ifd(dms(22.9068), "S", dms(43.1729), "W"))
    meta = decode_image(data, max_pixels=MAX).metadata
    assert meta.latitude == pytest.approx(-22.9068, abs=1e-5)
    assert meta.longitude == pytest.approx(-43.1729, abs=1e-5)


def test_gps_north_east_positive():
    data = jpeg_with_exif(gps=gps_ifd(dms(48.8584), "N", dms(2.2945), "E"))
    meta = decode_image(data, max_pixels=MAX).metadata
    assert meta.latitude == pytest.approx(48.8584, abs=1e-5)
    assert meta.longitude == pytest.approx(2.2945, abs=1e-5)


@pytest.mark.parametrize(
    "gps",
    [
        gps_ifd(dms(95.0), "N", dms(10.0), "E"),  # latitude out of range
        gps_ifd(dms(10.0), "N", dms(181.0), "E"),  # longitude out of range
        gps_ifd((rational(10), rational(75), rational(0)), "N", dms(10.0), "E"),  # minutes >= 60
        gps_ifd((IFDRational(1, 0), rational(0), rational(0)), "N", dms(10.0), "E"),  # x/0
        gps_ifd(dms(10.0), "X", dms(10.0), "E"),  # bad ref
        {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: dms(10.0)},  # no longitude
    ],
)
def test_gps_invalid_is_none(gps):
    meta = decode_image(jpeg_with_exif(gps=gps), max_pixels=MAX).metadata
    assert meta.latitude is None and meta.longitude is None


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_garbage_exif_does_not_reject_image():
    data = encode(Image.new("RGB", (8, 8), RED), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    result = decode_image(data, max_pixels=MAX)
    assert result.metadata.taken_at is None
    assert result.image.size == (8, 8)


# --------------------------------------------------------------------------
# rejection


def test_truncated_jpeg_rejected():
    im = Image.effect_noise((256, 256), 64).convert("RGB")
    data = encode(im, "JPEG", quality=90)
    with pytest.raises(ImageRejected, match="truncated or corrupt image"):
        decode_image(data[: len(data) // 2], max_pixels=MAX)


def test_truncated_png_rejected():
    data = encode(Image.effect_noise((256, 256), 64), "PNG")
    with pytest.raises(ImageRejected, match="truncated or corrupt image"):
        decode_image(data[: len(data) // 2], max_pixels=MAX)


def test_non_image_with_jpg_name_rejected(tmp_path):
    path = tmp_path / "holiday.jpg"
    path.write_bytes(b"<html><body>definitely not a picture</body></html>\n" * 20)
    with pytest.raises(ImageRejected, match=r"not an image \(unrecognised format\)"):
        decode_image(path, max_pixels=MAX)
    with pytest.raises(ImageRejected, match="not an image"):
        decode_image(str(path), max_pixels=MAX)
    with pytest.raises(ImageRejected, match="not an image"):
        decode_image(bytes(range(256)) * 8, max_pixels=MAX)


def test_unsupported_format_rejected():
    # Pillow can read ICO, but uploads are restricted to the whitelist.
    data = encode(Image.new("RGB", (16, 16), RED), "ICO")
    with pytest.raises(ImageRejected, match="not an image"):
        decode_image(data, max_pixels=MAX)


def test_zero_byte_rejected(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    for source in (b"", path, io.BytesIO()):
        with pytest.raises(ImageRejected, match="^empty file$"):
            decode_image(source, max_pixels=MAX)


def test_image_rejected_is_value_error():
    assert issubclass(ImageRejected, ValueError)


def test_bomb_header_rejected_before_decode():
    data = png_header(9000, 9000)  # header only: decoding would fail differently
    start = time.perf_counter()
    with pytest.raises(ImageRejected) as exc:
        decode_image(data, max_pixels=10_000_000)
    assert time.perf_counter() - start < 0.5
    assert str(exc.value) == "image too large: 81000000 pixels (limit 10000000)"


def test_pixel_limit_beyond_pillows_own_quotes_the_configured_limit():
    # Far beyond Pillow's internal MAX_IMAGE_PIXELS: the message names our limit, from the header.
    data = png_header(100_000, 100_000)
    start = time.perf_counter()
    with pytest.raises(ImageRejected) as exc:
        decode_image(data, max_pixels=100_000_000)
    assert time.perf_counter() - start < 0.5
    assert str(exc.value) == "image too large: 10000000000 pixels (limit 100000000)"


def test_pillows_bomb_limit_does_not_refuse_what_max_pixels_allows():
    # 12000 x 12000 = 144 Mpx: over Pillow's default 89 Mpx (it would warn, or with warnings as
    # errors refuse, quoting its own limit), under ours.
    data = encode(Image.new("1", (12000, 12000)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        decoded = decode_image(data, max_pixels=200_000_000, min_side=320)
    assert (decoded.metadata.width, decoded.metadata.height) == (12000, 12000)
    assert min(decoded.image.size) >= 320


def test_real_image_over_max_pixels_rejected():
    data = encode(Image.new("RGB", (100, 100), RED), "JPEG")
    with pytest.raises(ImageRejected, match=r"10000 pixels \(limit 5000\)"):
        decode_image(data, max_pixels=5000)
    assert decode_image(data, max_pixels=10000).metadata.width == 100


# --------------------------------------------------------------------------
# sources, draft mode and downscaling


def test_accepts_path_file_object_and_unseekable_stream(tmp_path):
    data = encode(Image.new("RGB", (30, 20), RED), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)

    class Stream:  # read() only, like some upload wrappers
        def __init__(self, b):
            self._b = io.BytesIO(b)

        def read(self, n=-1):
            return self._b.read(n)

    f = io.BytesIO(data)
    f.seek(7)  # left mid-way by a previous reader
    for source in (path, str(path), f, Stream(data), bytearray(data), memoryview(data)):
        assert decode_image(source, max_pixels=MAX).metadata.width == 30
    assert not f.closed  # caller's file objects are left open

    with open(path, "rb") as fh:
        assert decode_image(fh, max_pixels=MAX).image.size == (30, 20)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    im = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    return encode(im, "JPEG", quality=85)


def test_draft_mode_reduces_large_jpeg(big_jpeg):
    result = decode_image(big_jpeg, max_pixels=MAX, min_side=224)
    assert (result.metadata.width, result.metadata.height) == (4000, 3000)
    w, h = result.image.size
    assert min(w, h) >= 224
    assert max(w, h) <= 1000  # 1/8 DCT scale -> 500x375
    assert w > h
    assert result.image.mode == "RGB"


def test_draft_mode_with_orientation():
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encode(Image.new("RGB", (4000, 3000), RED), "JPEG", exif=exif)
    result = decode_image(data, max_pixels=MAX, min_side=224)
    assert (result.metadata.width, result.metadata.height) == (3000, 4000)
    w, h = result.image.size
    assert h > w >= 224 and h <= 1000


def test_without_min_side_full_size(big_jpeg):
    assert decode_image(big_jpeg, max_pixels=MAX).image.size == (4000, 3000)


def test_min_side_never_upscales_or_undershoots():
    data = encode(Image.new("RGB", (300, 250), RED), "JPEG")
    result = decode_image(data, max_pixels=MAX, min_side=224)
    assert result.image.size == (300, 250)
    result = decode_image(data, max_pixels=MAX, min_side=1000)
    assert result.image.size == (300, 250)


def test_min_side_reduces_non_jpeg():
    data = encode(Image.new("RGB", (2000, 1000), RED), "PNG")
    result = decode_image(data, max_pixels=MAX, min_side=224)
    assert (result.metadata.width, result.metadata.height) == (2000, 1000)
    w, h = result.image.size
    assert 224 <= h < 500 and w == 2 * h


# --------------------------------------------------------------------------
# thumbnails


def test_make_thumbnail_jpeg_within_max_side():
    thumb = make_thumbnail(Image.new("RGB", (1000, 500), RED))
    im = Image.open(io.BytesIO(thumb))
    assert im.format == "JPEG"
    assert im.size == (320, 160)
    assert close_to(im.getpixel((10, 10)), RED, tol=20)


def test_make_thumbnail_options_and_small_input():
    src = Image.new("RGB", (300, 900), RED)
    im = Image.open(io.BytesIO(make_thumbnail(src, max_side=100, quality=60)))
    assert im.size == (33, 100)
    assert src.size == (300, 900)  # input untouched
    small = Image.open(io.BytesIO(make_thumbnail(Image.new("RGB", (50, 40)))))
    assert small.size == (50, 40)  # never upscaled


def test_make_thumbnail_accepts_rgba():
    im = Image.open(io.BytesIO(make_thumbnail(Image.new("RGBA", (10, 10), (0, 0, 0, 0)))))
    assert im.mode == "RGB"
    assert close_to(im.getpixel((5, 5)), (255, 255, 255), tol=3)
