"""Key frames of a video, chosen by scene change, for the ingestion pipeline.

Runs in the decode processes (catalog.ingest.decoding), so their timeout applies, and a crash or an
out-of-memory kill there fails only its item; FFmpeg refuses frames past the pixel cap before it
allocates them.
Every sampled frame is shrunk to a small colour square and compared with the previous sample, as
it is and aligned on the shift that best explains a pan; a large difference both ways is a cut.
The first frame is always kept, then a frame after each cut (at least ``min_gap`` seconds after
the last one kept) and one every ``max_gap`` seconds in long shots.
Hostile files are refused on what the container's header says (streams, size, duration) before
any frame is decoded, and again on what decoding finds (a header may lie).

PyAV (FFmpeg's libraries, bundled in its wheel) is imported only when a video is decoded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np

from catalog.imaging import TAKEN_AT_MAX

# A cut: the mean absolute difference (0..1) of successive samples' 32x32 colour thumbnails (area
# averaged) is above SCENE_CHANGE and SCENE_RATIO times its recent level (an average halved at each
# sample), also where they overlap once shifted by the best pan between them. Within a calm shot
# or a followed pan it stays below ~0.05, between unrelated shots it is 0.15 or more. A pan of more
# than half the picture between two samples leaves too little in common to follow and reads like
# cuts; the recent level then keeps it from being a cut at every sample.
SCENE_CHANGE = 0.1
SCENE_RATIO = 1.7
_PROBE = 32  # side of the colour thumbnails compared (even: the pan search starts at half of it)
_MAX_SHIFT = _PROBE // 2  # probe pixels a pan may move between two samples
# A stored frame's long side: enough for the detail page, small enough to keep a video's frames cheap.
FRAME_MAX_SIDE = 1280
VIDEO_FORMAT = "VIDEO"

# ISO base media brands of still images (HEIC/AVIF also start with "ftyp"): those are pictures.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1",
                           b"mif2", b"msf1", b"avif", b"avis", b"avio"})
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"pnot"})
HEADER_BYTES = 64
T = TypeVar("T")


def sniff(head: bytes) -> str | None:
    """The container of a video from its first bytes ("mp4", "mov", "webm", "mkv", "avi"), or None;
    also its stored file's extension."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return None if head[8:12] in _IMAGE_BRANDS else "mov" if head[8:12] == b"qt  " else "mp4"
    if len(head) >= 8 and head[4:8] in _QUICKTIME_ATOMS:
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, or WebM by its DocType
        return "webm" if b"\x42\x82\x84webm" in head else "mkv"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def head_of(source: bytes | str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:HEADER_BYTES])
    with open(source, "rb") as fh:
        return fh.read(HEADER_BYTES)


class VideoRejected(ValueError):
    """Not a usable video; ``str(exc)`` is the reason shown for the item."""


@dataclass(frozen=True)
class VideoSpec:
    """The limits and spacing (picklable, read from the settings by the parent)."""

    min_gap: float
    max_gap: float
    sample_interval: float
    max_duration: float
    max_frames: int
    max_pixels: int
    max_streams: int
    max_aspect_ratio: float | None = None


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    width: int
    height: int
    container: str  # the demuxer's name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    taken_at: datetime | None = None  # the container's creation time, when it has a plausible one


def key_frames(source: bytes | str, spec: VideoSpec, *, keep: Callable[[float, object], T]) -> tuple[VideoInfo, list[T]]:
    """Choose the key frames of ``source`` (bytes, or a file's path); raises VideoRejected. Each
    chosen frame is passed at once to ``keep(seconds from the first frame, RGB PIL image)``, and
    what that returns is listed."""
    import av

    try:
        container = av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, "r",
                            # FFmpeg itself stops creating streams past the cap while it reads the header.
                            options={"max_streams": str(spec.max_streams + 1)})
    except av.FFmpegError as error:
        raise VideoRejected(f"not a readable video: {_reason(error)}") from None
    except MemoryError:
        raise VideoRejected("not a readable video: its header needs too much memory") from None
    with container:
        info, stream = _checked(container, spec)
        chosen, quarter_turned = _choose(container, stream, spec, keep)
    if quarter_turned:  # a phone's portrait video: the size it is shown at, as its frames are stored
        info = replace(info, width=info.height, height=info.width)
    return info, chosen


def _checked(container, spec: VideoSpec):
    if len(container.streams) > spec.max_streams:
        raise VideoRejected(f"too many streams: more than {spec.max_streams} (IMAGESEARCH_VIDEO_MAX_STREAMS)")
    if not container.streams.video:
        raise VideoRejected("no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoRejected("not a readable video: no frame size in its header")
    if width * height > spec.max_pixels:
        raise VideoRejected(f"frames too large: {width}x{height} is more than {spec.max_pixels} pixels "
                            "(IMAGESEARCH_VIDEO_MAX_PIXELS)")
    ratio = max(width, height) / min(width, height)
    if spec.max_aspect_ratio and ratio > spec.max_aspect_ratio:
        raise VideoRejected(f"aspect ratio {ratio:.1f}:1 is more than {spec.max_aspect_ratio:g}:1 "
                            "(IMAGESEARCH_MAX_ASPECT_RATIO)")
    duration = _declared_duration(container, stream)
    if duration > spec.max_duration:
        raise VideoRejected(_too_long(duration, spec))
    return VideoInfo(duration=duration, width=width, height=height, container=container.format.name,
                     taken_at=_creation_time(container.metadata.get("creation_time"))), stream


def _declared_duration(container, stream) -> float:
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    return duration if math.isfinite(duration) and duration > 0 else 0.0


def _creation_time(raw) -> datetime | None:
    """The container's creation time (ISO 8601, UTC); None when absent, unreadable or a zero epoch
    (muxers that do not know write 1904-01-01 or 1970-01-01)."""
    try:
        value = datetime.fromisoformat(str(raw).strip()) if raw else None
    except ValueError:
        return None
    if value is None or value.year <= 1970:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:  # the stored column's bounds, in UTC (9999-12-31T23:00-12:00 is past them)
        return value if value.astimezone(UTC) <= TAKEN_AT_MAX else None
    except OverflowError:
        return None


def _too_long(duration: float, spec: VideoSpec) -> str:
    return (f"too long: {duration:.0f} s is more than {spec.max_duration:g} s "
            "(IMAGESEARCH_VIDEO_MAX_DURATION)")


def _choose(container, stream, spec: VideoSpec, keep: Callable[[float, object], T]) -> tuple[list[T], bool]:
    """The chosen frames, and whether they were turned a quarter (width and height swapped)."""
    import av

    stream.thread_type = "AUTO"  # frame and slice threads: decoding is most of the cost
    # Frames no other frame refers to (most B-frames) are not decoded at all: samples are half a
    # second apart, and this halved the decoding time of 1080p H.264 (bench/video.py).
    stream.codec_context.skip_frame = "NONREF"
    # FFmpeg itself refuses frames past the cap, before it allocates them (a header may lie, and
    # the size may change mid-stream): the check in the loop below then only names the reason.
    stream.codec_context.options = {"max_pixels": str(spec.max_pixels)}
    chosen: list[T] = []
    start = previous = None
    next_sample = last_kept = level = t = 0.0
    cut_pending = quarter_turned = False
    try:
        for index, frame in enumerate(container.decode(stream)):
            if frame.width * frame.height > spec.max_pixels:  # a size change mid-stream
                raise VideoRejected(f"frames too large: {frame.width}x{frame.height} is more than "
                                    f"{spec.max_pixels} pixels (IMAGESEARCH_VIDEO_MAX_PIXELS)")
            raw = frame.time if frame.time is not None else index / float(stream.average_rate or 25)
            start = raw if start is None else start
            t = max(0.0, raw - start)
            if t > spec.max_duration:  # the header said less
                raise VideoRejected(_too_long(t, spec))
            if chosen and t < next_sample:
                continue
            # On a fixed grid (not from this frame's time), however unevenly the decoded frames fall.
            next_sample = (math.floor(t / spec.sample_interval + 1e-6) + 1) * spec.sample_interval
            # Twice the size, then averaged in numpy: swscale's AREA straight to 32x32 is not a true
            # box average (a pan of exactly one probe pixel still differed by 0.13), this is (0.002).
            probe = _halved(frame.reformat(width=2 * _PROBE, height=2 * _PROBE, format="rgb24",
                                           interpolation="AREA").to_ndarray())
            changed = False
            if previous is not None:
                difference = _shifted_difference(previous, probe, 0, 0)
                if difference > SCENE_CHANGE:  # a cut, or a pan: only then is the pan searched for
                    difference = min(difference, _pan_difference(previous, probe))
                changed = difference > max(SCENE_CHANGE, SCENE_RATIO * level)
                level = (level + difference) / 2
            previous = probe
            cut_pending = cut_pending or changed
            since = t - last_kept
            if not chosen or (cut_pending and since >= spec.min_gap) or since >= spec.max_gap:
                chosen.append(keep(round(t, 3), _upright(frame)))
                quarter_turned = quarter_turned or _rotation(frame) in (90, 270)
                last_kept, cut_pending = t, False
                if len(chosen) >= spec.max_frames:
                    break
    except av.ArgumentError:
        # EINVAL from the decoder is a frame it refuses to allocate: past max_pixels (a size change
        # mid-stream) or a size it cannot use. Not damage at the end: the whole video is refused.
        where = f"the frame size changes after {t:.1f} s to" if chosen else "frames of"
        raise VideoRejected(f"frames too large: {where} more than {spec.max_pixels} pixels "
                            "(IMAGESEARCH_VIDEO_MAX_PIXELS), or a size that cannot be decoded") from None
    except av.FFmpegError as error:
        if not chosen:  # a video cut short keeps the frames decoded before the damage
            raise VideoRejected(f"not a readable video: {_reason(error)}") from None
    if not chosen:
        raise VideoRejected("no decodable frame")
    return chosen, quarter_turned


def _pan_difference(previous: np.ndarray, probe: np.ndarray) -> float:
    """The difference of two probes at the shift (up to _MAX_SHIFT each way) that best aligns them,
    as a pan would: every shift tried at half resolution at once, then the best one refined. Not
    phase correlation (numpy FFTs): on pictures of a few large uniform areas it picked a wrong
    shift for about 1 sample pair in 10, this exhaustive search for none of the same 480 pairs
    (its cost, a few ms, is paid only when the unshifted difference is already high)."""
    from numpy.lib.stride_tricks import sliding_window_view

    half_a, half_b = _halved(previous), _halved(probe)
    side, reach = half_a.shape[0], _MAX_SHIFT // 2
    padded = np.zeros((side + 2 * reach, side + 2 * reach, 3), dtype=np.float32)
    padded[reach:reach + side, reach:reach + side] = half_a
    inside = np.zeros(padded.shape[:2], dtype=np.float32)
    inside[reach:reach + side, reach:reach + side] = 1
    # windows[reach + dy, reach + dx] is ``half_a`` shifted by (dy, dx); masks say where it is defined.
    windows = sliding_window_view(padded, (side, side), axis=(0, 1))
    masks = sliding_window_view(inside, (side, side))
    sums = np.einsum("yxcij,yxij->yx", np.abs(windows - half_b.transpose(2, 0, 1)), masks)
    row, column = np.unravel_index(np.argmin(sums / masks.sum(axis=(2, 3))), sums.shape)
    dy, dx = 2 * (int(row) - reach), 2 * (int(column) - reach)
    return min(_shifted_difference(previous, probe, y, x) for y in range(dy - 1, dy + 2) for x in range(dx - 1, dx + 2)
               if abs(y) <= _MAX_SHIFT and abs(x) <= _MAX_SHIFT)


def _halved(probe: np.ndarray) -> np.ndarray:
    side = probe.shape[0] // 2
    return probe.reshape(side, 2, side, 2, 3).mean(axis=(1, 3), dtype=np.float32)


def _shifted_difference(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> float:
    """Mean absolute difference (0..1) of ``a`` and ``b`` where ``a`` shifted by (dy, dx) overlaps ``b``."""
    height, width = a.shape[:2]
    moved = a[max(0, dy):height + min(0, dy), max(0, dx):width + min(0, dx)]
    fixed = b[max(0, -dy):height + min(0, -dy), max(0, -dx):width + min(0, -dx)]
    return float(np.abs(moved - fixed).mean()) / 255


def _upright(frame):
    """The frame as an RGB PIL image, long side at most FRAME_MAX_SIDE, turned as the container's
    display matrix says (phones record portrait video as rotated landscape)."""
    from PIL import Image

    scale = min(1.0, FRAME_MAX_SIDE / max(frame.width, frame.height))
    width, height = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
    image = frame.reformat(width=width, height=height, format="rgb24").to_image()
    # PyAV's rotation is counter-clockwise, as PIL's ROTATE_* are.
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    rotation = _rotation(frame)
    return image.transpose(turn[rotation]) if rotation in turn else image


def _rotation(frame) -> int:
    """The display matrix's counter-clockwise turn, in 0, 90, 180 or 270 (other angles: 0)."""
    rotation = round(getattr(frame, "rotation", 0) or 0) % 360
    return rotation if rotation in (90, 180, 270) else 0


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return str(text).strip().splitlines()[0][:200]


def frame_jpeg(image, *, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
