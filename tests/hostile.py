"""The project's own hostile inputs, generated in memory (no binary fixtures): what each must
become when imported. Used by tests/test_hostile_ingest.py and bench/hostile_memory.py."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image

MB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    error: str | None  # a substring of the item's error; None: the image must be stored


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def zlib_of_repeats(unit: bytes, count: int, block_bytes: int = MB) -> bytes:
    """zlib.compress(unit * count, 9) in effect, without deflating every copy: after a full flush the
    compressor starts afresh, so each block of copies deflates to the same bytes, which are repeated.
    (Deflating the GB of zeros of the big PNGs and zips one by one took a minute of the suite.)"""
    per_block = max(1, block_bytes // max(1, len(unit)))
    blocks, rest = divmod(count, per_block)
    block = unit * per_block
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header and checksum are ours
    deflated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH) if blocks else b""
    checksum = 1
    for _ in range(blocks):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(unit * rest, checksum)
    body = deflated * blocks + compressor.compress(unit * rest) + compressor.flush()
    return b"\x78\xda" + body + struct.pack(">I", checksum)


def png(width: int, height: int, *, rows: bytes | None = None, depth: int = 8, color: int = 0,
        chunks: bytes = b"") -> bytes:
    """A PNG of ``width`` x ``height``, built row by row (no image in memory); ``rows`` (filtered
    scanlines) default to all-zero samples, b"" for a header-only file that claims the size and
    has no pixels. ``chunks`` (PLTE, tRNS, ...) go before the pixels."""
    if rows is None:
        rows = zlib_of_repeats(b"\x00" + b"\x00" * ((width * depth * _CHANNELS[color] + 7) // 8), height)
    body = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)) + chunks
    if rows:
        body += png_chunk(b"IDAT", rows)
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


def png_needing_conversion(kind: str, side: int) -> bytes:
    """A ``side`` x ``side`` PNG of a mode that must be converted before it can be reduced:
    palette, palette + tRNS, bilevel, RGB + tRNS, gray + alpha, RGBA or 16-bit gray."""
    palette = png_chunk(b"PLTE", bytes([0, 0, 0, 255, 0, 0]))
    return {
        "palette": lambda: png(side, side, color=3, chunks=palette),
        "palette-trns": lambda: png(side, side, color=3, chunks=palette + png_chunk(b"tRNS", b"\x00")),
        "bilevel": lambda: png(side, side, depth=1),
        "rgb-trns": lambda: png(side, side, color=2, chunks=png_chunk(b"tRNS", bytes(6))),
        "gray-alpha": lambda: png(side, side, color=4),
        "rgba": lambda: png(side, side, color=6),
        "gray16": lambda: png(side, side, depth=16),
    }[kind]()


CONVERTED_KINDS = ("palette", "palette-trns", "bilevel", "rgb-trns", "gray-alpha", "rgba", "gray16")


def photo(index: int, size=(96, 64), fmt="JPEG", **save) -> bytes:
    """A small, distinct picture."""
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def jpeg_taken(index: int, when: str, offset: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif).update({ExifTags.Base.DateTimeOriginal: when,
                                            ExifTags.Base.OffsetTimeOriginal: offset})
    return photo(index, exif=exif.tobytes())


def flat_float_tiff(value: float, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("F", size, value).save(buffer, "TIFF")
    return buffer.getvalue()


def webp_canvas(width: int, height: int) -> bytes:
    """An animated WebP of two 1x1 frames on a ``width`` x ``height`` canvas (~160 bytes) that decodes
    fine: libwebp's animation decoder, which Pillow uses for every WebP, keeps two RGBA canvases."""
    buffer = io.BytesIO()
    frames = [Image.new("RGBA", (1, 1), (red, 2, 3, 4)) for red in (1, 9)]
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"VP8X", "Pillow wrote a WebP without the extended header"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")  # canvas size - 1
    return bytes(data)


def heif_claiming(fmt: str, width: int, height: int) -> bytes:
    """A 64x64 AVIF or HEIF (``fmt``) whose header (its ispe box) claims ``width`` x ``height``."""
    import catalog.imaging  # noqa: F401 - registers pillow-heif's HEIF writer

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, fmt, quality=10)
    data = bytearray(buffer.getvalue())
    at = data.index(b"ispe") + 8  # box type, then version and flags
    data[at:at + 8] = struct.pack(">II", width, height)
    return bytes(data)


def png_text_bomb(inflated: int = 8 * MB) -> bytes:
    """A good 64x64 PNG with a zTXt chunk that inflates to ``inflated`` bytes."""
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib_of_repeats(b"a" * 1024, inflated // 1024))
    return png(64, 64, chunks=text)


def jpeg_header(width: int, height: int) -> bytes:
    """SOI + a baseline SOF0 claiming the size, then nothing."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof


def zip_of_zeros(members: int = 16, member_bytes: int = 60 * MB) -> bytes:
    """A small zip that inflates to ``members`` x ``member_bytes`` of zeros (each a "not an image")."""
    block = b"\x00" * MB
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for index in range(members):
            with zf.open(f"zeros-{index:02d}.jpg", "w", force_zip64=True) as member:
                # Every write is the same block: deflate it once (see zlib_of_repeats). zipfile still
                # computes the sizes and CRC; were its compressor attribute renamed, it would deflate as before.
                member._compressor = _RepeatedBlockDeflater(block)
                for _ in range(member_bytes // MB):
                    member.write(block)
    return buffer.getvalue()


class _RepeatedBlockDeflater:
    """A level-9 raw deflater for a stream made of one block repeated."""

    def __init__(self, block: bytes):
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.block = block
        self.deflated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
        self.end = compressor.flush()

    def compress(self, data: bytes) -> bytes:
        assert data == self.block, "only for repeats of one block"
        return self.deflated

    def flush(self) -> bytes:
        return self.end


def good_zip(first_index: int, count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for index in range(first_index, first_index + count):
            zf.writestr(f"photos/{index}.jpg", photo(index))
    return buffer.getvalue()


def hostile_cases(*, good: int = 6) -> list[Case]:
    """Hostile files mixed with ``good`` good photos (plus good images with hostile metadata)."""
    cases = [Case(f"good-{i}.jpg", photo(i), None) for i in range(good)]
    cases += [
        Case("wide-20000x1.png", png(20000, 1), "aspect ratio 20000:1 exceeds limit"),
        Case("tall-1x20000.png", png(1, 20000), "aspect ratio 1:20000 exceeds limit"),
        Case("wide-200000x1.png", png(200000, 1), "aspect ratio 200000:1 exceeds limit"),
        Case("bomb-header.png", png(100_000, 100_000, rows=b""), "image too large"),
        # Under the pixel limit, so it is allocated and decoded: 90 Mpx of nothing.
        Case("huge-no-pixels.png", png(10_000, 9_000, rows=b""), "truncated or corrupt"),
        Case("huge-no-pixels.jpg", jpeg_header(10_000, 9_000), "truncated or corrupt"),
        Case("huge-header.jpg", jpeg_header(65_000, 65_000), "image too large"),
        Case("truncated.jpg", photo(900, size=(400, 300))[:1500], "truncated or corrupt"),
        # Decoders that need far more than 4 bytes a pixel: the cap is weighted by format.
        Case("canvas-10000x10000.webp", webp_canvas(10_000, 10_000), "image too large: 100000000 pixels"),
        Case("canvas-5000x5000.webp", webp_canvas(5000, 5000), None),  # at the WebP limit: ~400 MB to decode
        Case("claims-9000x9000.avif", heif_claiming("AVIF", 9000, 9000), "image too large: 81000000 pixels"),
        Case("claims-9000x9000.heic", heif_claiming("HEIF", 9000, 9000), "image too large: 81000000 pixels"),
        Case("text-bomb.png", png_text_bomb(), "metadata too large"),
        Case("empty.png", b"", "empty file"),
        Case("notes.jpg", b"a shopping list, not a photo\n" * 20, "not an image"),
        # Good images with hostile metadata: stored, the impossible date dropped.
        Case("bc-date.jpg", jpeg_taken(901, "0001:01:01 00:00:00", "+14:00"), None),
        Case("after-9999.jpg", jpeg_taken(902, "9999:12:31 23:00:00", "-10:00"), None),
        Case("flat-float.tif", flat_float_tiff(0.25), None),
        Case("panorama-8x1.png", photo(903, size=(800, 100), fmt="PNG"), None),
    ]
    # Images of the default pixel limit (100 Mpx) whose mode must be converted before reduction,
    # a few hundred KB each; converted whole, each would need 0.5-1.2 GB. The worst two first, so
    # that they are decoded at the same time.
    order = ("rgb-trns", "palette-trns") + tuple(k for k in CONVERTED_KINDS if k not in ("rgb-trns", "palette-trns"))
    cases += [Case(f"big-{kind}.png", png_needing_conversion(kind, 10_000), None) for kind in order]
    return cases
