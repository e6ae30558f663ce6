"""Decode uploaded images and extract their metadata.

Plain Pillow/numpy, no Django: callers pass bytes, a path or a file object and
get back an RGB image (orientation applied, optionally shrunk) plus metadata.
Every failure on untrusted input surfaces as ``ImageRejected``.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

try:  # HEIC/HEIF support is optional; without it such files are "not an image".
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover
    pillow_heif = None

__all__ = [
    "DECODE_COST",
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageMetadata",
    "ImageRejected",
    "decode_image",
    "fit_model_input",
    "make_thumbnail",
    "read_header",
]

# Whitelist what Image.open may try: avoids exotic plugins (EPS runs
# Ghostscript) and TGA's weak sniffing, which can "recognise" random bytes.
# Only registered names may be passed, otherwise Image.open raises KeyError.
Image.init()
SUPPORTED_FORMATS: tuple[str, ...] = tuple(
    f
    for f in ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
    if f in Image.OPEN
)
# decode_image checks its caller's max_pixels against the header of every image before any pixel
# is decoded; Pillow's own, fixed bomb limit would otherwise refuse (or warn) first, quoting a
# number that is not the configured one.
Image.MAX_IMAGE_PIXELS = None

# taken_at must be an instant PostgreSQL's driver can read back (years 1..9999 in UTC); the same
# bounds as catalog.models.TAKEN_AT_MIN/MAX, repeated here because this module is Django-free.
TAKEN_AT_MIN = datetime(1, 1, 1, tzinfo=timezone.utc)
TAKEN_AT_MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)

# Peak memory a pixel costs to decode, relative to PNG/TIFF/BMP/GIF (~4 bytes a pixel: Pillow keeps RGB in 4),
# so that ``max_pixels`` bounds memory rather than pixels: these decoders keep their own buffers beside
# Pillow's (libwebp's animation decoder, used for every WebP, two RGBA canvases plus the frame it hands
# over: ~16 B/px; libavif ~9.5, libheif ~7.5). Measured by bench/hostile_memory.py --decode-cost (Pillow 13).
# JPEG costs less (decoded at reduced scale) but is not favoured: without min_side it is decoded whole.
DECODE_COST: dict[str, float] = {"WEBP": 4.0, "AVIF": 2.5, "HEIF": 2.0}

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# EXIF orientation -> transpose turning stored pixels into displayed pixels
# (same table as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_TAG_ORIENTATION = ExifTags.Base.Orientation
_TAG_DATETIME = ExifTags.Base.DateTime
_TAG_DATETIME_ORIGINAL = ExifTags.Base.DateTimeOriginal
_TAG_OFFSET_TIME = ExifTags.Base.OffsetTime
_TAG_OFFSET_TIME_ORIGINAL = ExifTags.Base.OffsetTimeOriginal
_GPS = ExifTags.GPS

_OFFSET_RE = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_BOMB_RE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")


class ImageRejected(ValueError):
    """The upload is not a usable image; ``str(exc)`` is a short reason."""


@dataclass(frozen=True)
class ImageMetadata:
    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    format: str  # Pillow format name ("JPEG", "PNG", "HEIF", ...)
    taken_at: datetime | None  # timezone-aware
    latitude: float | None
    longitude: float | None


@dataclass(frozen=True)
class DecodedImage:
    metadata: ImageMetadata
    image: Image.Image  # RGB, orientation applied, maybe reduced (min_side)


def decode_image(
    source: bytes | str | os.PathLike | BinaryIO,
    *,
    max_pixels: int,
    min_side: int | None = None,
    max_aspect_ratio: float | None = None,
    max_decoded_pixels: int | None = None,
) -> DecodedImage:
    """Fully decode ``source`` or raise ``ImageRejected``.

    ``max_pixels`` is checked against the header's dimensions before any pixel
    data is decoded. With ``min_side`` the returned image may be scaled down
    (JPEG/HEIF draft decoding, then integer reduction) but its shorter side
    stays >= ``min_side``; metadata always reports the full dimensions.
    ``max_aspect_ratio`` (long side / short side) is checked on the header too. ``max_decoded_pixels``
    bounds what is decoded (after draft reduction; weighted by DECODE_COST like ``max_pixels``), for callers
    with less memory to spare: a 100 Mpx JPEG costs little at 1/8 scale, a 100 Mpx PNG 400 MB.
    """
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    if min_side is not None and min_side <= 0:
        raise ValueError("min_side must be positive")
    if max_aspect_ratio is not None and max_aspect_ratio < 1:
        raise ValueError("max_aspect_ratio must be >= 1")

    fp, owned = _open_source(source)
    try:
        return _decode(fp, max_pixels, min_side, max_aspect_ratio, max_decoded_pixels)
    finally:
        if owned:
            fp.close()


def make_thumbnail(image: Image.Image, *, max_side: int = 320, quality: int = 82) -> bytes:
    """JPEG bytes of ``image`` fitted inside ``max_side`` x ``max_side``."""
    if max_side <= 0:
        raise ValueError("max_side must be positive")
    if not 1 <= quality <= 95:
        raise ValueError("quality must be in 1..95")
    im = image if image.mode == "RGB" else _to_rgb(image)
    w, h = im.size
    scale = max_side / max(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # reducing_gap: cheap box pre-shrink, then LANCZOS for quality.
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def fit_model_input(image: Image.Image, *, size: int, resize_mode: str = "shortest",
                    resample: str = "BICUBIC") -> Image.Image:
    """The model's centre crop, cut from ``image`` and resized in one step (open_clip's "shortest"
    preprocessing: shorter side to ``size``, then a centre crop; other modes are left to it).

    Resizing only the source box that the crop keeps gives the same pixels (same scale and filter)
    as resizing the whole image first, which for a 20000x1 image would make a 4,480,000x224
    intermediate (GBs). Without torch, so that decode processes can run it; ClipEmbedder uses it too."""
    if resize_mode != "shortest":
        return image
    w, h = image.size
    if (w, h) == (size, size):
        return image
    # torchvision Resize(size) + CenterCrop(size), in the resized image's coordinates.
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    sx, sy = new_w / w, new_h / h
    box = (left / sx, top / sy, (left + size) / sx, (top + size) / sy)
    return image.resize((size, size), getattr(Image.Resampling, resample), box=box)


def read_header(
    source: bytes | str | os.PathLike, *, max_pixels: int, max_aspect_ratio: float | None = None
) -> tuple[ImageMetadata, Image.Transpose | None]:
    """Metadata, and the transpose that EXIF orientation asks for, from the header alone (no pixel
    is decoded): for decoders other than Pillow's (the GPU's). Same checks as ``decode_image``."""
    fp, _ = _open_source(source)
    try:
        img = _open_image(fp, max_pixels)
        with img:
            width, height = _checked_size(img, max_pixels, max_aspect_ratio)
            fmt = "JPEG" if img.format == "MPO" else (img.format or "UNKNOWN")
            exif = _safe_exif(img)
    finally:
        fp.close()
    orientation = exif.get(_TAG_ORIENTATION) if exif is not None else None
    transpose = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if transpose is not None and orientation >= 5:
        width, height = height, width
    latitude, longitude = _gps(exif)
    return ImageMetadata(width=width, height=height, format=fmt, taken_at=_taken_at(exif), latitude=latitude,
                         longitude=longitude), transpose


# --------------------------------------------------------------------------
# decoding


def _open_source(source) -> tuple[BinaryIO, bool]:
    """Return a seekable binary file and whether we must close it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageRejected("empty file")
        return io.BytesIO(source), True
    if isinstance(source, (str, os.PathLike)):
        fp = open(source, "rb")  # noqa: SIM115 - closed by decode_image
        if os.fstat(fp.fileno()).st_size == 0:
            fp.close()
            raise ImageRejected("empty file")
        return fp, True
    # File-like (e.g. Django UploadedFile). Pillow reads from offset 0.
    try:
        source.seek(0)
        empty = not source.read(1)
        source.seek(0)
    except (AttributeError, OSError):  # not seekable: buffer it
        data = source.read()
        if not data:
            raise ImageRejected("empty file") from None
        return io.BytesIO(data), True
    if empty:
        raise ImageRejected("empty file")
    return source, False


def _open_image(fp: BinaryIO, max_pixels: int) -> Image.Image:
    """Parse the header only; an unreadable one is an ImageRejected."""
    try:
        return Image.open(fp, formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_rejection(exc, max_pixels) from None
    except Exception as exc:
        raise _corrupt_rejection(exc) from None


def _checked_size(img: Image.Image, max_pixels: int, max_aspect_ratio: float | None) -> tuple[int, int]:
    """The header's size, once it is known to be within the limits."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected("truncated or corrupt image")
    cost = DECODE_COST.get(img.format or "", 1.0)
    limit = int(max_pixels / cost)
    if width * height > limit:
        costly = f" for {img.format}" if cost != 1.0 else ""
        raise ImageRejected(f"image too large: {width * height} pixels (limit {limit}{costly})")
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageRejected(f"aspect ratio {width}:{height} exceeds limit {max_aspect_ratio:g}")
    return width, height


def _check_decoded_size(img: Image.Image, max_decoded_pixels: int) -> None:
    # img.size is the drafted size by now (JPEG: 1/2..1/8; HEIF: a large enough embedded thumbnail).
    cost = DECODE_COST.get(img.format or "", 1.0)
    limit = int(max_decoded_pixels / cost)
    if img.width * img.height > limit:
        costly = f" for {img.format}" if cost != 1.0 else ""
        raise ImageRejected(f"image too large to decode here: {img.width * img.height} pixels (limit {limit}{costly})")


def _decode(fp: BinaryIO, max_pixels: int, min_side: int | None, max_aspect_ratio: float | None,
            max_decoded_pixels: int | None) -> DecodedImage:
    img = _open_image(fp, max_pixels)
    # `with`, not close(): close() would also close a caller's file object.
    with img:
        width, height = _checked_size(img, max_pixels, max_aspect_ratio)
        # MPO (multi-picture, common from cameras/phones) is a JPEG whose
        # primary image is plain baseline JPEG: report it as such.
        fmt = "JPEG" if img.format == "MPO" else (img.format or "UNKNOWN")
        try:
            if min_side:
                # JPEG: DCT scaling (1/2..1/8) during decode; HEIF: embedded
                # thumbnail. No-op for other formats.
                img.draft("RGB", (min_side, min_side))
            if max_decoded_pixels is not None:
                _check_decoded_size(img, max_decoded_pixels)
            img.load()  # full decode: truncation is only detected here
            # EXIF after load: PNG may keep it after IDAT; fp is still ours.
            exif = _safe_exif(img)
            # Reduce before converting, so no full-size copy is made beside the decoded source.
            rgb = _reduce_to_rgb(img, min_side) if min_side else _to_rgb(img)
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_rejection(exc, max_pixels) from None
        except MemoryError:
            raise ImageRejected("image too large to decode in the memory available") from None
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, ...
            raise _corrupt_rejection(exc) from None

    orientation = exif.get(_TAG_ORIENTATION) if exif is not None else None
    transpose = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if transpose is not None:
        rgb = rgb.transpose(transpose)
        if orientation >= 5:
            width, height = height, width

    latitude, longitude = _gps(exif)
    metadata = ImageMetadata(
        width=width,
        height=height,
        format=fmt,
        taken_at=_taken_at(exif),
        latitude=latitude,
        longitude=longitude,
    )
    return DecodedImage(metadata=metadata, image=rgb)


def _corrupt_rejection(exc: Exception) -> ImageRejected:
    # PNG text chunks (zTXt/iTXt) that inflate past Pillow's MAX_TEXT_CHUNK/MAX_TEXT_MEMORY: the pixels may
    # be fine, but Pillow cannot skip such a chunk, so the file is refused with the true reason.
    if isinstance(exc, ValueError) and "MAX_TEXT_" in str(exc):
        return ImageRejected("metadata too large")
    return ImageRejected("truncated or corrupt image")


def _bomb_rejection(exc: Exception, max_pixels: int) -> ImageRejected:
    # Only if someone re-enabled Pillow's limit: still quote ours, never Pillow's.
    m = _BOMB_RE.search(str(exc))
    if m:
        return ImageRejected(f"image too large: {m[1]} pixels (limit {max_pixels})")
    return ImageRejected(f"image too large (limit {max_pixels} pixels)")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Return a new RGB image; alpha composited onto white, >8-bit scaled."""
    if im.mode in _HIGH_DEPTH_MODES:
        im = _to_8bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(rgba, mask=rgba)
        return out
    if im.mode == "RGB":
        return im.copy()  # never hand out the (closed) file-backed image
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips I;16/I/F at 255 (mostly white), so rescale:
    # 16-bit data maps full range (/257); anything else is min-max stretched.
    a = np.asarray(im, dtype=np.float32)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0 and hi <= 1:
        a *= 255  # float images are usually normalised to 0..1
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a *= 1 / 257
    else:
        a -= lo
        a *= 255 / (hi - lo) if hi > lo else 0.0  # flat: no range to stretch
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")


# Modes Image.reduce averages in place (LA/RGBA it converts to premultiplied alpha at full size).
_REDUCIBLE_MODES = frozenset({"L", "RGB", "CMYK", "YCbCr", "I", "F"})
# Pixels per strip when an image is reduced strip by strip: a few MB of conversion copies.
_STRIP_PIXELS = 1 << 20


def _reduce_to_rgb(im: Image.Image, min_side: int) -> Image.Image:
    # Integer box reduction: cheap, and floor(short / factor) >= min_side.
    factor = min(im.size) // min_side
    if factor < 2:
        return _to_rgb(im)
    if im.mode in _REDUCIBLE_MODES and "transparency" not in im.info:
        return _to_rgb(im.reduce(factor))
    return _to_rgb(_reduce_in_strips(im, factor))


def _reduce_in_strips(im: Image.Image, factor: int) -> Image.Image:
    """``im`` reduced by ``factor``, converted to a mode reduce() handles one strip at a time.

    Palette, bilevel, 16-bit and transparency images must be converted before they can be
    averaged; converting the whole image would make full-size RGBA/RGB copies (several bytes a
    pixel beside a one-byte source). Strips are whole multiples of ``factor`` rows, so every
    reduction box is the same as in a whole-image reduce and the result is identical.
    """
    if im.mode in _HIGH_DEPTH_MODES:
        # Same values in a mode reduce() handles; scaled to 8 bits by _to_rgb once reduced.
        def convert(strip):
            return strip if strip.mode in _REDUCIBLE_MODES else strip.convert("I")
        mode = "F" if im.mode == "F" else "I"
    elif im.mode in ("LA", "RGBA") and "transparency" not in im.info:
        # reduce() averages these premultiplied; _to_rgb composites the result onto white.
        def convert(strip):
            return strip
        mode = im.mode
    else:
        convert, mode = _to_rgb, "RGB"  # alpha composited onto white, then averaged
    width, height = im.size
    rows = factor * max(1, _STRIP_PIXELS // (width * factor))
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = im.crop((0, top, width, min(height, top + rows)))
        out.paste(convert(strip).reduce(factor), (0, top // factor))
    return out


# --------------------------------------------------------------------------
# metadata


def _safe_exif(img: Image.Image) -> Image.Exif | None:
    # Malformed EXIF is common and must not reject an otherwise fine image.
    try:
        exif = img.getexif()
        exif.get_ifd(ExifTags.IFD.Exif)  # parse now, while the file is open
        exif.get_ifd(ExifTags.IFD.GPSInfo)
        return exif
    except Exception:
        return None


def _taken_at(exif: Image.Exif | None) -> datetime | None:
    if exif is None:
        return None
    try:
        sub = exif.get_ifd(ExifTags.IFD.Exif)
    except Exception:
        sub = {}
    for value, offset in (
        (sub.get(_TAG_DATETIME_ORIGINAL), sub.get(_TAG_OFFSET_TIME_ORIGINAL)),
        (exif.get(_TAG_DATETIME), sub.get(_TAG_OFFSET_TIME)),
    ):
        dt = _parse_exif_datetime(value)
        if dt is not None:
            return _readable_instant(dt.replace(tzinfo=_parse_offset(offset) or timezone.utc))
    return None


def _readable_instant(dt: datetime) -> datetime | None:
    # "0001:01:01 00:00:00" at +14:00 is a BC instant in UTC: PostgreSQL stores it, the driver
    # cannot read it back. Such a date is useless anyway, so it is dropped.
    try:
        utc = dt.astimezone(timezone.utc)
    except OverflowError:
        return None
    return dt if TAKEN_AT_MIN <= utc <= TAKEN_AT_MAX else None


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    return value.strip("\x00 ")


def _parse_exif_datetime(value) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:  # "YYYY:MM:DD HH:MM:SS"; blanks/zeros ("0000:00:00 ...") fail here
        return datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def _parse_offset(value) -> timezone | None:
    m = _OFFSET_RE.match(_text(value) or "")
    if not m:
        return None
    hours, minutes = int(m[2]), int(m[3])
    if hours > 14 or minutes >= 60:
        return None
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if m[1] == "-" else delta)


def _gps(exif: Image.Exif | None) -> tuple[float | None, float | None]:
    # Both or neither: half a coordinate is useless for search.
    if exif is None:
        return None, None
    try:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        lat = _gps_coord(gps.get(_GPS.GPSLatitude), gps.get(_GPS.GPSLatitudeRef), "N", "S", 90)
        lon = _gps_coord(gps.get(_GPS.GPSLongitude), gps.get(_GPS.GPSLongitudeRef), "E", "W", 180)
    except Exception:
        return None, None
    if lat is None or lon is None:
        return None, None
    return lat, lon


def _gps_coord(value, ref, pos: str, neg: str, limit: float) -> float | None:
    if value is None:
        return None
    parts = list(value) if isinstance(value, (tuple, list)) else [value]
    if not 1 <= len(parts) <= 3:
        return None
    try:
        nums = [float(p) for p in parts]  # IFDRational x/0 -> nan
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not all(math.isfinite(n) and n >= 0 for n in nums):
        return None
    if any(n >= 60 for n in nums[1:]):
        return None
    deg = sum(n / 60**i for i, n in enumerate(nums))
    ref_text = (_text(ref) or pos).upper()[:1]  # missing ref: assume N/E
    if ref_text == neg:
        deg = -deg
    elif ref_text != pos:
        return None
    if abs(deg) > limit:
        return None
    return deg
