"""The one ingestion pipeline every entry point feeds (folder, upload, URL, archive).

For each item: read and hash the bytes (in threads), and skip (without decoding) those already
stored or seen earlier in the run; decode and validate, read metadata, make the thumbnail and the
model input in worker processes (catalog.ingest.decoding), overlapping with the embedding of the
previous batch; embed in batches (on a thread of its own, overlapping with storing the batch
before); then store each batch: its files first (content-addressed, write-once, in parallel
threads), then its rows and vectors in one transaction with bulk inserts. An item is either
stored completely (file, thumbnail, row and vector, committed together) or not at all, so an
interrupted import is finished by running it again. If a batch cannot be stored, its items are
stored one by one, so one bad item never fails its neighbours. Whatever goes wrong with one item
(unreadable, hostile, out of memory, a decoder that crashes its process, a failed write) is that
item's failure, never the run's.

Memory stays bounded: items are read lazily a bounded number ahead, an item's bytes beyond 1 MiB
wait for decoding and storing in a temporary file (the decode process reads it by name), and a
decode process sends back only the thumbnail and the model input, never the decoded image.

Duplicates by SHA-256 are never stored twice, also across concurrent workers: a batch is stored
under a PostgreSQL advisory lock per hash, and rows are inserted only for hashes that no
committed row has once the locks are held. The same locks make a worker's clean-up of files
never remove files another worker has committed.

A video (recognised by its first bytes) is one item: its key frames are decoded in the same
processes, embedded with the batch, and stored as images of their own (Image.video, video_time)
with the Video row in one transaction per video, under the lock of the video's hash; a stored
video's bytes are a duplicate whose outcome names its first frame.

Bytes deleted in the app (catalog.models.DeletedContent) are skipped when the caller asks
(``IngestOptions.skip_deleted``: the watched folder, the sample photos), looked up per chunk of
hashes like the stored ones; storing bytes removes their tombstone in the same transaction.

Vectors go into the active embedding space and, while another space is being built, into that
one too (catalog/spaces.py), in the same transaction as the image row.

Callers that keep their own per-item records (import jobs) pass ``key`` on each item and get it
back on its outcome; the outcome of an added item is reported inside the transaction that
stores it, so such records commit with the image or not at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import BinaryIO

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction

from catalog import geocode, spaces
from catalog.embedder import ClipEmbedder, EmbedderUnavailable, get_embedder
from catalog.imaging import TAKEN_AT_MAX, ImageMetadata
from catalog.ingest import decoding, gpu_decoding
from catalog.ingest import video as videos
from catalog.ingest.lanes import StoreLanes
from catalog.ingest.decoding import Decoded, DecodePool, DecodeSpec, Pending
from catalog.ingest.decoding import short_error as _short
from catalog.ingest.names import safe_text
from catalog.ingest.rows import copy_embeddings
from catalog.models import DeletedContent, EmbeddingSpace, Image, Video, files_in_use

logger = logging.getLogger(__name__)

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
              "TIFF": "tif", "HEIF": "heic", "MPO": "jpg"}
# An item's bytes wait for storing in memory up to this size, in a temporary file beyond it:
# a batch of large files (or archive members) in flight then costs disk, not memory.
IN_MEMORY_BYTES = 1024 * 1024
SPOOL_CHUNK = 1024 * 1024  # a streamed item (a file) is read and hashed this much at a time
# Threads writing a batch's files (disk I/O releases the GIL).
FILE_WRITERS = 4


class ItemRejected(ValueError):
    """Raised by an item's ``read`` when its bytes cannot be had (e.g. a refused URL);
    ``str(exc)`` is the user-facing reason recorded on the failed outcome."""


@dataclass(frozen=True)
class IngestItem:
    """One candidate image. ``read`` is called lazily, in a worker thread, and returns the bytes
    or a binary stream (which the pipeline reads in chunks and closes: a large video never sits
    in memory whole)."""

    name: str
    source_ref: str
    read: Callable[[], bytes | BinaryIO]
    key: object = None  # the caller's id for this item, echoed on its outcome
    # Its own metadata (a manifest row): overrides the run's options (city, group key) and EXIF (taken_at).
    metadata: "ItemMetadata | None" = None
    source: str = ""  # an Image.Source for this item, else the run's (a manifest mixes files and URLs)

    def __post_init__(self):
        # Names from file systems and archives may carry undecodable bytes (surrogate escapes):
        # made printable and storable here, whichever entry point built the item.
        object.__setattr__(self, "name", safe_text(self.name))
        object.__setattr__(self, "source_ref", safe_text(self.source_ref))

    @classmethod
    def from_bytes(cls, name: str, data: bytes, source_ref: str = "") -> "IngestItem":
        return cls(name=name, source_ref=source_ref or name, read=lambda: data)


@dataclass(frozen=True)
class ItemMetadata:
    """One item's own metadata; None (city, group key, taken-at): the run's options or EXIF decide."""

    city: str | None = None
    group_key: str | None = None
    taken_at: "datetime | None" = None
    title: str = ""
    tags: tuple[str, ...] = ()
    attributes: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class IngestOptions:
    source: str
    city: str = ""
    group_key: str = ""
    added_by_id: int | None = None  # the user who started the import, if any
    # Skip bytes deleted in the app (DeletedContent): a watched folder still holding the file must not
    # bring it back. Every other import is a deliberate re-add, and storing clears the tombstone.
    skip_deleted: bool = False


@dataclass(frozen=True)
class ItemOutcome:
    ADDED, DUPLICATE, FAILED = "added", "duplicate", "failed"
    DELETED = "deleted"  # deleted in the app, not imported again (only with IngestOptions.skip_deleted)

    name: str
    source_ref: str
    status: str
    image_id: int | None = None  # a video's: its first frame
    reason: str = ""
    key: object = None
    frames: int = 0  # a video's key frames stored


@dataclass
class IngestReport:
    outcomes: list[ItemOutcome] = field(default_factory=list)

    def _count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def added(self) -> int:
        return self._count(ItemOutcome.ADDED)

    @property
    def duplicates(self) -> int:
        return self._count(ItemOutcome.DUPLICATE)

    @property
    def failed(self) -> list[ItemOutcome]:
        return [o for o in self.outcomes if o.status == ItemOutcome.FAILED]


@dataclass
class _Prepared:
    item: IngestItem
    index: int  # position in the input, so the report keeps the input's order
    held: object = None  # the item's bytes: `bytes`, or a named temporary file beyond IN_MEMORY_BYTES
    sha256: str = ""
    metadata: ImageMetadata | None = None
    thumbnail: bytes = b""
    pixels: object = None  # the model input as uint8 pixels (decoding.Decoded.pixels)
    error: str = ""
    duplicate_of: int | None = None  # an already stored image with the same bytes
    deleted: bool = False  # deleted in the app, and the run skips such bytes (IngestOptions.skip_deleted)
    first_copy: "_Prepared | _Seen | None" = None  # the same bytes earlier in this run
    video_kind: str | None = None  # a video's container by its first bytes (catalog.ingest.video.sniff)
    video: videos.VideoInfo | None = None  # a decoded video: its key frames in ``frames``
    frames: tuple = ()  # decoding.Frame, each stored as an image of its own

    @property
    def all_pixels(self) -> list:
        """What the model embeds for it: one input, or one per key frame."""
        return [frame.pixels for frame in self.frames] if self.video is not None else [self.pixels]

    @property
    def source(self) -> bytes | str:
        """What a decode process is sent: the bytes, or the name of the file holding them."""
        return self.held if isinstance(self.held, (bytes, bytearray)) else self.held.name

    def release(self) -> None:
        if hasattr(self.held, "close"):
            self.held.close()
        self.held = self.pixels = None
        self.frames = ()


def ingest_items(items: Iterable[IngestItem], *, options: IngestOptions,
                 on_outcome: Callable[[ItemOutcome], None] | None = None,
                 embedder: ClipEmbedder | None = None, decode_workers: int | None = None,
                 store_connections: int | None = None) -> IngestReport:
    """Ingest ``items``; returns one outcome per item (also passed to ``on_outcome`` as it happens).

    For an added item ``on_outcome`` runs inside the transaction that stores it: if it raises,
    the image is not stored and the exception propagates. ``decode_workers`` processes decode
    (default: IMAGESEARCH_DECODE_WORKERS, or sized to the machine when that is 0); batches are
    stored on ``store_connections`` connections at once (default: IMAGESEARCH_STORE_CONNECTIONS)."""
    decoding.warm_up()  # the decode processes' server starts while the model loads
    space, active = spaces.active_space_and_model(load=lambda: embedder or get_embedder())
    builds = _BuildTargets(primary=active, primary_space=space)
    if embedder is not None and embedder.config != active.config:
        # A caller's own model (benchmarks): its own space only.
        space = spaces.ensure_space(config=embedder.config, dimensions=embedder.dimensions,
                                    state=EmbeddingSpace.State.RETIRED)
        builds = None
    embedder = embedder or active
    outcomes: dict[int, ItemOutcome] = {}

    def record(prepared: _Prepared, outcome: ItemOutcome, *, reported: bool = False) -> None:
        outcomes[prepared.index] = outcome
        if on_outcome is not None and not reported:
            on_outcome(outcome)

    def store_all(ready: list[_Prepared], vectors: Future, writers: ThreadPoolExecutor) -> None:
        try:
            results = vectors.result()
        except Exception as error:  # the whole batch could not be embedded: each item says so
            logger.exception("embedding a batch of %d image(s) failed", len(ready))
            for prepared in ready:
                prepared.release()
                record(prepared, _failed(prepared, f"could not be embedded: {_short(error)}"))
            return
        try:
            # Rows of the results, in order: one per image, one per key frame of a video.
            per_input = [[(target, vectors[row]) for target, vectors in results] for row in range(len(results[0][1]))]
            per_item, row = [], 0
            for prepared in ready:
                count = len(prepared.all_pixels)
                per_item.append(per_input[row] if prepared.video is None else per_input[row:row + count])
                row += count
            pairs = list(zip(ready, per_item, strict=True))
            images = [pair for pair in pairs if pair[0].video is None]
            stored = dict(zip((id(p) for p, _ in images),
                              _store_safely(images, options=options, on_added=on_outcome,
                                            write_files=lambda batch: _write_files(batch, writers))
                              if images else [], strict=True))
            for prepared, frame_vectors in pairs:
                if prepared.video is not None:  # each video in a transaction of its own
                    stored[id(prepared)] = _store_video_safely(prepared, frame_vectors, options=options,
                                                               on_added=on_outcome, writers=writers)
            stored = [stored[id(prepared)] for prepared in ready]
        finally:
            for prepared in ready:
                prepared.release()
        for prepared, outcome in zip(ready, stored, strict=True):
            # An added item's outcome was reported inside its transaction.
            record(prepared, outcome, reported=outcome.status == ItemOutcome.ADDED)

    workers = decode_workers or settings.INGEST_DECODE_WORKERS or decoding.default_workers(
        cuda=embedder.pixel_fit()[3].startswith("cuda"))
    lanes = store_connections or settings.INGEST_STORE_CONNECTIONS

    def embed(pixels: list, others: list[tuple[EmbeddingSpace, ClipEmbedder]]) -> list:
        """[(space, vectors)]: the active space's, then those of the spaces being built."""
        results = [(space, embedder.embed_prepared([embedder.tensor_from_pixels(p) for p in pixels]))]
        for other_space, other in others:
            try:
                results.append((other_space, other.embed_prepared([other.tensor_from_pixels(p) for p in pixels])))
            except Exception:  # the build job embeds what is missing; the import goes on
                logger.exception("embedding a batch into %s (being built) failed", other_space.name)
        return results

    # The model runs on its own thread (torch releases the GIL): while it embeds one batch, the
    # previous one is stored, by this thread on its connection or by the store lanes on theirs.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-embed") as model, \
            ThreadPoolExecutor(max_workers=FILE_WRITERS * lanes, thread_name_prefix="ingest-write") as writers, \
            StoreLanes(lanes) as store:
        embedding: tuple[list[_Prepared], Future] | None = None
        for batch in _batched(_prepare_all(items, embedder, workers, skip_deleted=options.skip_deleted),
                              embedder.config.batch_size,
                              weight=lambda prepared: len(prepared.frames) or 1):
            ready = []
            for prepared in batch:
                first = prepared.first_copy
                if prepared.error:
                    record(prepared, _failed(prepared, prepared.error))
                elif prepared.duplicate_of is not None:
                    record(prepared, _duplicate(prepared, prepared.duplicate_of))
                elif prepared.deleted:
                    record(prepared, _deleted(prepared))
                elif first is not None:  # its first copy may not be stored yet
                    record(prepared, _failed(prepared, first.error) if first.error else _duplicate(prepared, None))
                else:
                    ready.append(prepared)
                    continue
                prepared.release()
            previous = embedding
            # Spaces being built are looked up per batch, so a build started mid-import gets the rest.
            others = builds.current() if builds is not None and ready else []
            embedding = (ready, model.submit(embed, [px for p in ready for px in p.all_pixels], others)) if ready else None
            if previous is not None:
                store.submit(store_all, *previous, writers)
        if embedding is not None:
            store.submit(store_all, *embedding, writers)
    return IngestReport(outcomes=[outcomes[index] for index in sorted(outcomes)])


class _BuildTargets:
    """The spaces being built (or made active since the import began) that new images are
    embedded into as well, with their models. A space whose model cannot load here, or cuts its
    input differently from the active model's (the decode processes cut one input per image), is
    left to its build job (queued again one lease after a switch, catalog/jobs/builds.py)."""

    def __init__(self, *, primary: ClipEmbedder, primary_space: EmbeddingSpace):
        self.fit = primary.pixel_fit()[:3]
        self.primary_space_id = primary_space.pk
        self.skipped: set[int] = set()

    def current(self) -> list[tuple[EmbeddingSpace, ClipEmbedder]]:
        targets = []
        # A space made active since the import began gets the rest too (the one it began with
        # still gets every image, so both are complete).
        switched = [space for space in [spaces.active_space()] if space is not None and space.has_model]
        for space in [*spaces.building_spaces(), *switched]:
            if space.pk == self.primary_space_id or space.pk in self.skipped:
                continue
            try:
                other = spaces.embedder_for(space)
                reason = "" if other.pixel_fit()[:3] == self.fit else "its model cuts its input differently"
            except EmbedderUnavailable as error:
                reason = str(error)
            if reason:
                logger.warning("new images are not embedded into %s (being built) here: %s; its build job "
                               "embeds them", space.name, reason)
                self.skipped.add(space.pk)
            else:
                targets.append((space, other))
        return targets


def decode_spec(embedder: ClipEmbedder) -> DecodeSpec:
    size, resize_mode, resample, _ = embedder.pixel_fit()
    return DecodeSpec(max_pixels=settings.IMAGE_MAX_PIXELS, min_side=max(size, settings.THUMBNAIL_MAX_SIDE),
                      max_aspect_ratio=settings.IMAGE_MAX_ASPECT_RATIO, thumbnail_side=settings.THUMBNAIL_MAX_SIDE,
                      input_size=size, resize_mode=resize_mode, resample=resample, video=video_spec())


def video_spec() -> videos.VideoSpec:
    return videos.VideoSpec(min_gap=settings.VIDEO_MIN_GAP, max_gap=settings.VIDEO_MAX_GAP,
                            sample_interval=settings.VIDEO_SAMPLE_INTERVAL, max_duration=settings.VIDEO_MAX_DURATION,
                            max_frames=settings.VIDEO_MAX_FRAMES, max_pixels=settings.VIDEO_MAX_PIXELS,
                            max_streams=settings.VIDEO_MAX_STREAMS, max_aspect_ratio=settings.IMAGE_MAX_ASPECT_RATIO)


def _prepare_all(items: Iterable[IngestItem], embedder: ClipEmbedder, workers: int, *,
                 skip_deleted: bool = False) -> Iterator[_Prepared]:
    """Read and hash items in threads, then decode those not stored yet in ``workers``
    processes, in order, keeping a bounded number in flight. Known hashes are looked up once per
    chunk, on this (the calling) thread, which owns the database connection."""
    spec = decode_spec(embedder)
    device = embedder.pixel_fit()[3]
    on_gpu = settings.INGEST_GPU_JPEG_DECODE and device.startswith("cuda") and gpu_decoding.available()
    lookahead = max(2 * embedder.config.batch_size, 2 * workers, 4)
    # The first copy of each hash while it is in flight, then only its outcome: a long run keeps
    # no thumbnails, spools or archive members of what it has finished.
    first_by_hash: dict[str, _Prepared | _Seen] = {}

    def finished(prepared: _Prepared, pending: Pending | None) -> _Prepared:
        if pending is not None:
            _take(prepared, pool.result(pending))
            first_by_hash[prepared.sha256] = _Seen(prepared.error)
        return prepared

    # Reading is I/O (files, URLs, archive members) and hashing releases the GIL: threads.
    with ThreadPoolExecutor(max_workers=max(2, workers), thread_name_prefix="ingest-read") as readers, \
            DecodePool(workers) as pool:
        in_flight: deque[tuple[_Prepared, Pending | None]] = deque()
        for chunk in _batched(_read_all(items, readers, lookahead), embedder.config.batch_size):
            known = Image.objects.ids_by_hash(p.sha256 for p in chunk if not p.error and not p.video_kind)
            if any(p.video_kind for p in chunk):  # a stored video: the id of its first frame
                known.update(Video.objects.first_frames_by_hash(p.sha256 for p in chunk if not p.error and p.video_kind))
            # Per chunk, like the known hashes: a huge folder never has every tombstone in memory.
            deleted = DeletedContent.objects.among(p.sha256 for p in chunk if not p.error) if skip_deleted else set()
            entries: list[list] = []
            for_gpu: list[tuple[list, bytes]] = []
            for prepared in chunk:
                entry = [prepared, None]
                if prepared.error:
                    pass
                elif prepared.sha256 in known:
                    prepared.duplicate_of = known[prepared.sha256]
                    prepared.release()
                elif prepared.sha256 in deleted:
                    prepared.deleted = True
                    prepared.release()
                elif prepared.sha256 in first_by_hash:
                    prepared.first_copy = first_by_hash[prepared.sha256]
                    prepared.release()
                else:
                    first_by_hash[prepared.sha256] = prepared
                    data = _bytes_of(prepared) if on_gpu and not prepared.video_kind else b""
                    if data and gpu_decoding.wanted(data, device=device, available=True):
                        for_gpu.append((entry, data))
                    else:
                        entry[1] = pool.submit(prepared.source, spec,
                                               timeout=settings.VIDEO_TIMEOUT if prepared.video_kind else None)
                entries.append(entry)
            if for_gpu:  # one batch on the GPU; what it fails on goes to the decode processes, alone
                results = gpu_decoding.decode_batch(
                    [data for _, data in for_gpu], spec,
                    gpu_decode=functools.partial(gpu_decoding.decode_on_gpu, device=device),
                    cpu_decode=lambda source, spec: pool.result(pool.submit(source, spec)))
                for (entry, _), result in zip(for_gpu, results, strict=True):
                    entry[1] = decoding.completed(result)
            in_flight.extend(map(tuple, entries))
            while len(in_flight) >= lookahead:
                yield finished(*in_flight.popleft())
        while in_flight:
            yield finished(*in_flight.popleft())


def _take(prepared: _Prepared, decoded: Decoded) -> None:
    if decoded.error:
        prepared.error = decoded.error
        if decoded.error.startswith("could not be processed"):  # not a plain bad image: worth a look
            logger.warning("preparing %s failed: %s", prepared.item.source_ref, decoded.error)
        prepared.release()
    elif decoded.video is not None:
        info = decoded.video
        prepared.video, prepared.frames = info, decoded.frames
        # What the frames' rows share (the item's metadata applies to each of them, see _frame_row).
        prepared.metadata = ImageMetadata(width=info.width, height=info.height, format=videos.VIDEO_FORMAT,
                                          taken_at=info.taken_at, latitude=None, longitude=None)
    else:
        prepared.metadata, prepared.thumbnail, prepared.pixels = decoded.metadata, decoded.thumbnail, decoded.pixels


def _bytes_of(prepared: _Prepared) -> bytes:
    if isinstance(prepared.held, (bytes, bytearray)):
        return bytes(prepared.held)
    prepared.held.seek(0)
    return prepared.held.read()


def _read_all(items: Iterable[IngestItem], pool: ThreadPoolExecutor, lookahead: int) -> Iterator[_Prepared]:
    pending: deque[Future] = deque()
    for index, item in enumerate(items):
        pending.append(pool.submit(_read, item, index))
        if len(pending) >= lookahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass(frozen=True)
class _Seen:
    """What a later copy needs of a first copy that has been decoded: whether that failed."""

    error: str


def _read(item: IngestItem, index: int) -> _Prepared:
    prepared = _Prepared(item=item, index=index)
    try:
        data = item.read()
        if isinstance(data, (bytes, bytearray)):
            prepared.sha256 = hashlib.sha256(data).hexdigest()
            head = bytes(data[:videos.HEADER_BYTES])
            prepared.held = _hold(data)
        else:  # a stream (a file): hashed while spooled, never whole in memory, however large
            prepared.sha256, head, prepared.held = _spool(data)
        prepared.video_kind = videos.sniff(head)
        del data
    except ItemRejected as rejected:
        prepared.error = str(rejected)
    except OSError as error:  # unreadable file, vanished path
        prepared.error = f"cannot read file: {error.strerror or error}"
    except Exception as error:  # MemoryError included: this item's failure, never the run's
        logger.exception("reading %s failed", item.source_ref)
        prepared.error = f"cannot read: {_short(error)}"
    if prepared.error:
        prepared.release()
    return prepared


def _hold(data: bytes):
    """Keep ``data`` until it is decoded and stored: small in memory, large in a temporary file
    (removed when closed) that the decode process opens by name."""
    if len(data) <= IN_MEMORY_BYTES:
        return data
    spool = tempfile.NamedTemporaryFile(prefix="ingest-", suffix=".item")  # noqa: SIM115 - closed by release()
    try:
        spool.write(data)
        spool.flush()
    except BaseException:
        spool.close()
        raise
    return spool


def _spool(stream) -> tuple[str, bytes, object]:
    """(SHA-256, first bytes, held) of a binary stream, read in chunks and closed (its close() may
    refuse what was read, e.g. a watched file that changed meanwhile)."""
    digest, size, head, kept, spool = hashlib.sha256(), 0, b"", [], None
    try:
        while chunk := stream.read(SPOOL_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if len(head) < videos.HEADER_BYTES:
                head += chunk[:videos.HEADER_BYTES - len(head)]
            if spool is None and size > IN_MEMORY_BYTES:
                spool = tempfile.NamedTemporaryFile(prefix="ingest-", suffix=".item")  # noqa: SIM115 - closed by release()
                spool.writelines(kept)
                kept = []
            if spool is None:
                kept.append(chunk)
            else:
                spool.write(chunk)
        stream.close()
        if spool is None:
            return digest.hexdigest(), head, b"".join(kept)
        spool.flush()
        return digest.hexdigest(), head, spool
    except BaseException:
        stream.close()
        if spool is not None:
            spool.close()
        raise


class _CallerError(Exception):
    """Wraps an exception raised by the caller's ``on_outcome``: it is the run's, not the item's."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _failed(prepared: _Prepared, reason: str) -> ItemOutcome:
    return ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.FAILED, reason=reason,
                       key=prepared.item.key)


def _deleted(prepared: _Prepared) -> ItemOutcome:
    return ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.DELETED,
                       reason="deleted in the app", key=prepared.item.key)


def _duplicate(prepared: _Prepared, existing_id: int | None) -> ItemOutcome:
    reason = "already stored"
    if prepared.item.metadata is not None:  # a manifest row: say that its metadata went nowhere
        reason = (f"already stored (image {existing_id}); this row's metadata was not applied" if existing_id
                  else "the same file as an earlier item; this row's metadata was not applied")
    return ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.DUPLICATE, image_id=existing_id,
                       reason=reason, key=prepared.item.key)


def _store_safely(pairs: list[tuple[_Prepared, object]], **store) -> list[ItemOutcome]:
    """Store a batch; if that fails, its items one by one, so a bad one fails alone."""
    try:
        return _store_batch(pairs, **store)
    except _CallerError as wrapped:  # the caller's own failure (e.g. a lost lease) ends the run
        raise wrapped.error from None
    except Exception as error:
        if len(pairs) > 1:
            logger.warning("storing a batch of %d image(s) failed (%s); storing them one by one",
                           len(pairs), _short(error))
            return [outcome for pair in pairs for outcome in _store_safely([pair], **store)]
        prepared = pairs[0][0]
        if isinstance(error, IntegrityError):
            # Stored meanwhile by a writer that does not take the locks (none in this project).
            existing = Image.objects.ids_by_hash([prepared.sha256]).get(prepared.sha256)
            if existing is not None:
                return [_duplicate(prepared, existing)]
        logger.exception("storing %s failed", prepared.item.source_ref)
        return [_failed(prepared, f"could not be stored: {_short(error)}")]


def _file_names(prepared: _Prepared) -> tuple[str, str]:
    shard = prepared.sha256[:2]
    return (f"images/{shard}/{prepared.sha256}.{EXTENSIONS.get(prepared.metadata.format, 'img')}",
            f"thumbnails/{shard}/{prepared.sha256}.jpg")


def _store_batch(pairs: list[tuple[_Prepared, list]], *, options: IngestOptions,
                 on_added: Callable[[ItemOutcome], None] | None,
                 write_files: Callable[[list[_Prepared]], None]) -> list[ItemOutcome]:
    """Store ``pairs`` (item, [(space, vector), ...]) in one transaction; the outcome of each, in order."""
    outcomes: dict[int, ItemOutcome] = {}
    with content_locks([prepared.sha256 for prepared, _ in pairs]):
        # Under the locks this is the final word: a concurrent worker has committed or will wait.
        existing = Image.objects.ids_by_hash(prepared.sha256 for prepared, _ in pairs)
        # Deleted since it was read (the delete committed meanwhile): still skipped.
        deleted = DeletedContent.objects.among(p.sha256 for p, _ in pairs) if options.skip_deleted else set()
        new = []
        for prepared, vector in pairs:
            if prepared.sha256 in existing:
                outcomes[prepared.index] = _duplicate(prepared, existing[prepared.sha256])
            elif prepared.sha256 in deleted:
                outcomes[prepared.index] = _deleted(prepared)
            else:
                new.append((prepared, vector))
        committed = False
        try:
            if new:
                write_files([prepared for prepared, _ in new])  # a row never names a missing file
                with transaction.atomic():
                    images = Image.objects.bulk_create([_image_row(prepared, options) for prepared, _ in new])
                    _forget_deleted([prepared.sha256 for prepared, _ in new])
                    # Only into spaces that still exist (a space being built may be dropped meanwhile).
                    present = spaces.lock_present(target.pk for _, vectors in new for target, _ in vectors)
                    copy_embeddings((image.pk, target.pk, vector)
                                    for image, (_, vectors) in zip(images, new, strict=True)
                                    for target, vector in vectors if target.pk in present)
                    for image, (prepared, _) in zip(images, new, strict=True):
                        outcome = ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.ADDED,
                                              image_id=image.pk, key=prepared.item.key)
                        outcomes[prepared.index] = outcome
                        _announce(on_added, outcome)
            committed = True
        finally:
            if not committed:
                _remove_unreferenced([name for prepared, _ in new for name in _file_names(prepared)])
    return [outcomes[prepared.index] for prepared, _ in pairs]


def _forget_deleted(hashes: list[str]) -> None:
    """Stored again, deliberately: its tombstone goes in the transaction that stores it, so a failed
    store leaves the deletion remembered and a committed one leaves no stale tombstone behind."""
    DeletedContent.objects.filter(sha256__in=hashes).delete()


def _announce(on_added: Callable[[ItemOutcome], None] | None, outcome: ItemOutcome) -> None:
    """Tell the caller, inside the storing transaction, so that its own records commit with the rows."""
    if on_added is not None:
        try:
            on_added(outcome)
        except Exception as error:
            raise _CallerError(error) from error


def _image_row(prepared: _Prepared, options: IngestOptions) -> Image:
    meta = prepared.metadata
    own = prepared.item.metadata or ItemMetadata()
    city = own.city if own.city is not None else options.city
    if not city and meta.latitude is not None and meta.longitude is not None:
        city = geocode.city_at(meta.latitude, meta.longitude)
    file_name, thumb_name = _file_names(prepared)
    return Image(file=file_name, thumbnail=thumb_name, sha256=prepared.sha256, original_name=prepared.item.name[:255],
                 width=meta.width, height=meta.height, city=city[:120],
                 group_key=(own.group_key if own.group_key is not None else options.group_key)[:120],
                 taken_at=own.taken_at or meta.taken_at, title=own.title[:255], tags=list(own.tags),
                 attributes=dict(own.attributes), latitude=meta.latitude, longitude=meta.longitude,
                 source=prepared.item.source or options.source, source_ref=prepared.item.source_ref[:1000],
                 status=Image.Status.EMBEDDED, added_by_id=options.added_by_id)


def _frame_key(video_sha256: str, time: float) -> str:
    """A key frame's Image.sha256: derived from its video's hash and its time, not from the frame's
    own bytes, so that identical frames of two videos (black, a title card) are two images."""
    return hashlib.sha256(f"video-frame:{video_sha256}:{time:.3f}".encode()).hexdigest()


def _frame_files(video_sha256: str, time: float) -> tuple[str, str]:
    key = _frame_key(video_sha256, time)
    return f"images/{key[:2]}/{key}.jpg", f"thumbnails/{key[:2]}/{key}.jpg"


def _video_files(prepared: _Prepared) -> list[tuple[str, object]]:
    """(storage name, bytes or held file) of a video and each of its frames and thumbnails."""
    sha = prepared.sha256
    files: list[tuple[str, object]] = [(f"videos/{sha[:2]}/{sha}.{prepared.video_kind}", prepared.held)]
    for frame in prepared.frames:
        image_name, thumb_name = _frame_files(sha, frame.time)
        files += [(image_name, frame.image), (thumb_name, frame.thumbnail)]
    return files


def _frame_row(prepared: _Prepared, frame, video: Video, options: IngestOptions) -> Image:
    """A key frame's row: the item's (the video's) metadata, the frame's own file, size and time."""
    row = _image_row(prepared, options)
    row.sha256 = _frame_key(prepared.sha256, frame.time)
    row.file, row.thumbnail = _frame_files(prepared.sha256, frame.time)
    row.width, row.height = frame.width, frame.height
    row.video, row.video_time = video, frame.time
    if not row.group_key:  # a video's frames are one group: "one per group" searches show one frame of it
        row.group_key = f"video-{prepared.sha256[:16]}"
    if row.taken_at is not None and row.taken_at == prepared.video.taken_at:  # the recording's start
        try:
            row.taken_at += timedelta(seconds=frame.time)
        except OverflowError:  # past year 9999: no date, as for a photo's unreadable one
            row.taken_at = None
        if row.taken_at is not None and row.taken_at > TAKEN_AT_MAX:
            row.taken_at = None
    return row


def _store_video_safely(prepared: _Prepared, frame_vectors: list, **store) -> ItemOutcome:
    try:
        return _store_video(prepared, frame_vectors, **store)
    except _CallerError as wrapped:
        raise wrapped.error from None
    except Exception as error:
        if isinstance(error, IntegrityError):
            existing = Video.objects.first_frames_by_hash([prepared.sha256]).get(prepared.sha256)
            if existing is not None:
                return _duplicate(prepared, existing)
        logger.exception("storing %s failed", prepared.item.source_ref)
        return _failed(prepared, f"could not be stored: {_short(error)}")


def _store_video(prepared: _Prepared, frame_vectors: list, *, options: IngestOptions,
                 on_added: Callable[[ItemOutcome], None] | None, writers: ThreadPoolExecutor) -> ItemOutcome:
    """Store a video, its key frames (as images) and their vectors in one transaction: all or nothing.
    ``frame_vectors``: [(space, vector), ...] per frame. Under the locks of the video's hash and of
    its frames' keys (the orphan sweep takes those of the files it removes)."""
    files = _video_files(prepared)
    with content_locks([prepared.sha256, *(_frame_key(prepared.sha256, f.time) for f in prepared.frames)]):
        existing = Video.objects.first_frames_by_hash([prepared.sha256]).get(prepared.sha256)
        if existing is not None:
            return _duplicate(prepared, existing)
        if options.skip_deleted and DeletedContent.objects.among([prepared.sha256]):  # deleted since it was read
            return _deleted(prepared)
        committed = False
        try:
            _write_all(files, writers)
            info = prepared.video
            with transaction.atomic():
                video = Video.objects.create(file=files[0][0], sha256=prepared.sha256,
                                             original_name=prepared.item.name[:255], duration=info.duration,
                                             width=info.width, height=info.height)
                _forget_deleted([prepared.sha256])
                images = Image.objects.bulk_create([_frame_row(prepared, frame, video, options)
                                                    for frame in prepared.frames])
                present = spaces.lock_present(target.pk for vectors in frame_vectors for target, _ in vectors)
                copy_embeddings((image.pk, target.pk, vector)
                                for image, vectors in zip(images, frame_vectors, strict=True)
                                for target, vector in vectors if target.pk in present)
                outcome = ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.ADDED,
                                      image_id=images[0].pk, key=prepared.item.key, frames=len(images))
                _announce(on_added, outcome)
            committed = True
        finally:
            if not committed:
                _remove_unreferenced([name for name, _ in files])
    return outcome


def _write_files(batch: list[_Prepared], writers: ThreadPoolExecutor) -> None:
    """Write each item's file and thumbnail, in parallel; raises the first failure."""
    files = []
    for prepared in batch:
        file_name, thumb_name = _file_names(prepared)
        files += [(file_name, prepared.held), (thumb_name, prepared.thumbnail)]
    _write_all(files, writers)


def _write_all(files: list[tuple[str, object]], writers: ThreadPoolExecutor) -> None:
    """Write (storage name, bytes or held file) pairs in parallel; raises the first failure."""
    jobs = [writers.submit(_write_once, name, data) for name, data in files]
    for job in jobs:  # all finish before a failure is raised, so clean-up sees every file
        job.exception()
    for job in jobs:
        job.result()


@contextlib.contextmanager
def content_locks(hashes: list[str]):
    """Session-level advisory locks on ``hashes``: they serialise workers storing the same bytes
    across the transaction and the clean-up after it, so one's clean-up never removes a file the
    other has written and committed. Taken in key order, so two batches never wait on each other
    in a circle."""
    keys = sorted({int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True) for sha256 in hashes})
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_advisory_lock(k)) FROM (SELECT unnest(%s::bigint[]) AS k ORDER BY 1) AS s",
                       [keys])
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(pg_advisory_unlock(k)) FROM unnest(%s::bigint[]) AS k", [keys])
        except Exception:  # connection gone: the server released the locks with the session
            logger.warning("could not release the storage locks of %d image(s)", len(keys), exc_info=True)


def _remove_unreferenced(names: list[str]) -> None:
    """Delete the content-addressed files of items whose rows did not commit, unless a
    committed row names them (best effort: never hides the original failure)."""
    if not names:
        return
    try:
        referenced = files_in_use(names)
        for name in names:
            if name not in referenced and default_storage.exists(name):
                default_storage.delete(name)
    except Exception:
        logger.warning("could not remove the files of items that were not stored: %s", names, exc_info=True)


def _write_once(name: str, data) -> str:
    """Store ``data`` (bytes, or a file from ``_hold``) under a content-addressed ``name``. A file
    left by an interrupted run is reused if complete and replaced if not, so re-runs never
    duplicate files."""
    if isinstance(data, (bytes, bytearray)):
        content = ContentFile(data)
    else:
        data.seek(0)
        content = File(data)
    if default_storage.exists(name):
        if default_storage.size(name) == content.size:
            return name
        default_storage.delete(name)
    saved = default_storage.save(name, content)
    if saved != name:  # a storage that renames on collision would break content addressing
        raise RuntimeError(f"storage saved {name!r} as {saved!r}")
    return saved


def _batched(iterable: Iterable, size: int, *, weight: Callable[[object], int] = lambda _: 1) -> Iterator[list]:
    """Lists of elements whose weights add up to ``size`` or just past it (a video weighs its frames)."""
    batch: list = []
    total = 0
    for element in iterable:
        batch.append(element)
        total += weight(element)
        if total >= size:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch
