"""Decoding and preprocessing in worker processes, for the ingestion pipeline.

Decoding a 12 MP JPEG is ~30 ms of CPU, much of it holding the GIL (Pillow's Python side, the
thumbnail, the model crop), so threads stop scaling at about one core. Each child here decodes
one item at a time and sends back its metadata, its encoded thumbnail and the model input as
uint8 pixels at the model's input size (~150 KB), never the full-size image. A video (known by its
first bytes) gives the same for each of its key frames (catalog.ingest.video), plus the frame as a
JPEG; its items wait IMAGESEARCH_VIDEO_TIMEOUT instead of IMAGESEARCH_DECODE_TIMEOUT.

Children import only this module, Pillow, numpy and catalog.imaging: no Django, no torch. They
are started by forkserver (spawn where there is none), never by fork: the parent holds database
connections and torch threads. A child that dies (OOM-killed, a crashing decoder) breaks the
pool: the items it took down are retried one at a time in a pool of their own, so only the item
that kills that one too fails, and the main pool is rebuilt.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from catalog.imaging import ImageMetadata, ImageRejected, decode_image, fit_model_input, make_thumbnail
from catalog.ingest import video
from imagesearch.machine import usable_cores

CHILD_DIED = "could not be processed: the decoding process died (out of memory, or a decoder crashed)"


@dataclass(frozen=True)
class DecodeSpec:
    """What a child needs to know (picklable, settings already read by the parent)."""

    max_pixels: int
    min_side: int
    max_aspect_ratio: float | None
    thumbnail_side: int
    input_size: int
    resize_mode: str = "shortest"
    resample: str = "BICUBIC"
    video: video.VideoSpec | None = None  # None: videos are not accepted (decoded as images, and refused)


@dataclass(frozen=True)
class Frame:
    """A video's key frame, ready to store and embed like an image."""

    time: float  # seconds from the video's first frame
    width: int
    height: int
    image: bytes  # the frame as JPEG
    thumbnail: bytes
    pixels: np.ndarray


@dataclass(frozen=True)
class Decoded:
    metadata: ImageMetadata | None = None
    thumbnail: bytes = b""
    pixels: np.ndarray | None = None  # uint8 HxWx3: the model input before normalisation
    error: str = ""
    video: video.VideoInfo | None = None  # a video: its key frames in ``frames``, nothing above
    frames: tuple[Frame, ...] = ()


def decode(source: bytes | str, spec: DecodeSpec) -> Decoded:
    """Decode ``source`` (bytes, or the path of a spooled file) into what the pipeline stores and
    embeds. Every failure is returned, never raised: it is that item's, not the pool's."""
    try:
        if spec.video is not None and video.sniff(video.head_of(source)):
            return decode_video(source, spec)
        decoded = decode_image(source, max_pixels=spec.max_pixels, min_side=spec.min_side,
                               max_aspect_ratio=spec.max_aspect_ratio)
        return finish(decoded.image, decoded.metadata, spec)
    except (ImageRejected, video.VideoRejected) as rejected:
        return Decoded(error=str(rejected))
    except Exception as error:  # MemoryError included
        return Decoded(error=f"could not be processed: {short_error(error)}")


def decode_video(source: bytes | str, spec: DecodeSpec) -> Decoded:
    """A video's key frames, each with its thumbnail and model input; raises VideoRejected."""

    def keep(time: float, image) -> Frame:  # made at once: the video's full-size frames never pile up
        done = finish(image, None, spec)
        return Frame(time=time, width=image.width, height=image.height, image=video.frame_jpeg(image),
                     thumbnail=done.thumbnail, pixels=done.pixels)

    info, frames = video.key_frames(source, spec.video, keep=keep)
    return Decoded(video=info, frames=tuple(frames))


def finish(image, metadata: ImageMetadata, spec: DecodeSpec) -> Decoded:
    """Thumbnail and model input from an already reduced, upright RGB image."""
    thumbnail = make_thumbnail(image, max_side=spec.thumbnail_side)
    fitted = fit_model_input(image, size=spec.input_size, resize_mode=spec.resize_mode, resample=spec.resample)
    return Decoded(metadata=metadata, thumbnail=thumbnail, pixels=np.asarray(fitted, dtype=np.uint8))


def short_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def default_workers(*, cuda: bool, cores: int | None = None) -> int:
    """Decode processes for this machine: with the model on a GPU, every core but the one feeding
    it and the one storing; with the model on the CPU it needs the cores too, and decoding costs
    about 0.6 core per core the model uses (bench/README.md), so half of them. At least one."""
    cores = cores or usable_cores()
    return max(1, cores - 2 if cuda else cores // 2)


def _context():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        # The server imports these once; each child is a fork of it, so starts in milliseconds.
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def warm_up() -> None:
    """Start the fork server now (it imports Pillow and numpy in the background), e.g. while the
    model loads."""
    context = _context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


@dataclass
class Pending:
    """One item sent to the pool: its future, and what to send again if a child dies with it."""

    future: Future
    generation: int
    source: bytes | str
    spec: DecodeSpec
    timeout: float | None = None  # instead of the pool's (videos take longer)


def completed(decoded: Decoded) -> Pending:
    """A Pending for an item decoded elsewhere (on the GPU)."""
    future: Future = Future()
    future.set_result(decoded)
    return Pending(future, -1, b"", None)


class DecodePool:
    """``workers`` child processes running ``decode``; use as a context manager. An item whose
    result is not back ``timeout`` seconds after it is asked for (default
    IMAGESEARCH_DECODE_TIMEOUT) fails, and the children are killed: a decoder stuck in a loop
    holds its core and the import forever otherwise."""

    def __init__(self, workers: int, *, timeout: float | None = None):
        if timeout is None:
            from django.conf import settings  # here, in the parent only: children never load Django

            timeout = settings.INGEST_DECODE_TIMEOUT
        self.timeout = timeout
        self.workers = workers
        self._context = _context()
        self._lock = threading.Lock()
        self._generation = 0
        self._pool = self._new(workers)
        self._alone: ProcessPoolExecutor | None = None

    def _new(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=self._context,
                                   initializer=_exit_with, initargs=(os.getpid(),))

    def submit(self, source: bytes | str, spec: DecodeSpec, *, timeout: float | None = None) -> Pending:
        # `decode` looked up at call time, so a test can put a crashing one in its place.
        with self._lock:
            try:
                future = self._pool.submit(_task(), source, spec)
            except BrokenProcessPool:  # a child died since the last submit: start afresh
                self._rebuild(self._generation)
                future = self._pool.submit(_task(), source, spec)
            return Pending(future, self._generation, source, spec, timeout)

    def result(self, pending: Pending) -> Decoded:
        timeout = pending.timeout or self.timeout
        try:
            return pending.future.result(timeout=timeout)
        except FutureTimeout:
            with self._lock:  # the others in flight see a broken pool and are retried alone, below
                self._rebuild(pending.generation, kill=True)
            return Decoded(error=self._too_slow(timeout))
        except (BrokenProcessPool, CancelledError):  # a child died, or a timeout elsewhere recycled the pool
            pass
        except Exception as error:  # the task raised past its own handler, or its result did not pickle
            return Decoded(error=f"could not be processed: {short_error(error)}")
        with self._lock:
            self._rebuild(pending.generation)
        # Any item in flight when a child died lands here; alone, only the culprit dies again.
        try:
            return self._single().submit(_task(), pending.source, pending.spec).result(timeout=timeout)
        except (BrokenProcessPool, FutureTimeout) as error:
            _kill(self._alone)
            self._alone = None
            return Decoded(error=self._too_slow(timeout) if isinstance(error, FutureTimeout) else CHILD_DIED)
        except Exception as error:
            return Decoded(error=f"could not be processed: {short_error(error)}")

    def _too_slow(self, timeout: float) -> str:
        return f"could not be processed: decoding took longer than {timeout:g} s"

    def _rebuild(self, generation: int, *, kill: bool = False) -> None:
        if generation == self._generation:  # once per breakage, however many items saw it
            if kill:
                _kill(self._pool)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new(self.workers)
            self._generation += 1

    def _single(self) -> ProcessPoolExecutor:
        if self._alone is None:
            self._alone = self._new(1)
        return self._alone

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._alone is not None:
            self._alone.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _task():
    return globals()["decode"]


def _kill(pool: ProcessPoolExecutor) -> None:
    """SIGKILL a pool's children (shutdown alone waits for a stuck one to finish its item)."""
    for process in list((pool._processes or {}).values()):  # no public API lists them
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _exit_with(pid: int) -> None:
    """In a child: exit when the process that started the pool (``pid``) does. A child holds both
    ends of its task queue, so it never sees EOF when that process is SIGKILLed, and it keeps the
    fork server alive too: without this, each killed worker left ~70 MB of processes behind."""
    import select

    def watch() -> None:
        try:
            handle = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone
            os._exit(1)
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    os._exit(1)
                except PermissionError:
                    pass
                threading.Event().wait(1.0)
        select.select([handle], [], [])  # readable once the process has exited
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
