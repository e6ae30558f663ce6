"""The one ingestion pipeline every entry point feeds (folder, upload, URL, archive).

For each item: read and hash the bytes, and skip (without decoding) those
already stored or seen earlier in the run; decode and validate, read metadata,
make the thumbnail and the model input (in worker threads, overlapping with the
embedding of the previous batch), embed in batches (on a thread of its own,
overlapping with storing the batch before), then store files and rows. An item
is either stored completely (file, thumbnail, row and vector, committed
together) or not at all, so an interrupted import is finished by running it
again. Whatever goes wrong with one item (unreadable, hostile, out of memory,
a failed write) is that item's failure, never the run's.

Memory stays bounded: items are read lazily a bounded number ahead, an item's
bytes beyond 1 MiB wait for storing in a temporary file, and the model input is
made from the already reduced image (see ClipEmbedder.prepare_image).

Callers that keep their own per-item records (import jobs) pass ``key`` on
each item and get it back on its outcome; the outcome of an added item is
reported inside the transaction that stores it, so such records commit with
the image or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.db.models import Q

from catalog import geocode
from catalog.embedder import ClipEmbedder, get_embedder
from catalog.imaging import ImageMetadata, ImageRejected, decode_image, make_thumbnail
from catalog.ingest.names import safe_text
from catalog.models import Embedding, EmbeddingSpace, Image

logger = logging.getLogger(__name__)

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
              "TIFF": "tif", "HEIF": "heic", "MPO": "jpg"}
# An item's bytes wait for storing in memory up to this size, in a temporary file beyond it:
# a batch of large files (or archive members) in flight then costs disk, not memory.
IN_MEMORY_BYTES = 1024 * 1024


class ItemRejected(ValueError):
    """Raised by an item's ``read`` when its bytes cannot be had (e.g. a refused URL);
    ``str(exc)`` is the user-facing reason recorded on the failed outcome."""


@dataclass(frozen=True)
class IngestItem:
    """One candidate image. ``read`` is called lazily, in a worker thread."""

    name: str
    source_ref: str
    read: Callable[[], bytes]
    key: object = None  # the caller's id for this item, echoed on its outcome

    def __post_init__(self):
        # Names from file systems and archives may carry undecodable bytes (surrogate escapes):
        # made printable and storable here, whichever entry point built the item.
        object.__setattr__(self, "name", safe_text(self.name))
        object.__setattr__(self, "source_ref", safe_text(self.source_ref))

    @classmethod
    def from_bytes(cls, name: str, data: bytes, source_ref: str = "") -> "IngestItem":
        return cls(name=name, source_ref=source_ref or name, read=lambda: data)


@dataclass(frozen=True)
class IngestOptions:
    source: str
    city: str = ""
    group_key: str = ""
    added_by_id: int | None = None  # the user who started the import, if any


@dataclass(frozen=True)
class ItemOutcome:
    ADDED, DUPLICATE, FAILED = "added", "duplicate", "failed"

    name: str
    source_ref: str
    status: str
    image_id: int | None = None
    reason: str = ""
    key: object = None


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
    held: object = None  # the item's bytes: `bytes`, or a temporary file beyond IN_MEMORY_BYTES
    sha256: str = ""
    metadata: ImageMetadata | None = None
    thumbnail: bytes = b""
    tensor: object = None
    error: str = ""
    duplicate_of: int | None = None  # an already stored image with the same bytes
    first_copy: "_Prepared | _Seen | None" = None  # the same bytes earlier in this run

    def release(self) -> None:
        if hasattr(self.held, "close"):
            self.held.close()
        self.held = self.tensor = None


def ingest_items(items: Iterable[IngestItem], *, options: IngestOptions,
                 on_outcome: Callable[[ItemOutcome], None] | None = None,
                 embedder: ClipEmbedder | None = None, decode_workers: int | None = None) -> IngestReport:
    """Ingest ``items``; returns one outcome per item (also passed to ``on_outcome`` as it happens).

    For an added item ``on_outcome`` runs inside the transaction that stores it: if it raises,
    the image is not stored and the exception propagates."""
    embedder = embedder or get_embedder()
    space = EmbeddingSpace.objects.ensure(name=embedder.space_name, dimensions=embedder.dimensions)
    outcomes: dict[int, ItemOutcome] = {}

    def record(prepared: _Prepared, outcome: ItemOutcome, *, reported: bool = False) -> None:
        outcomes[prepared.index] = outcome
        if on_outcome is not None and not reported:
            on_outcome(outcome)

    def failed(prepared: _Prepared, reason: str) -> ItemOutcome:
        return ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.FAILED, reason=reason,
                           key=prepared.item.key)

    def store_all(ready: list[_Prepared], vectors: Future) -> None:
        try:
            results = vectors.result()
        except Exception as error:  # the whole batch could not be embedded: each item says so
            logger.exception("embedding a batch of %d image(s) failed", len(ready))
            for prepared in ready:
                prepared.release()
                record(prepared, failed(prepared, f"could not be embedded: {_short(error)}"))
            return
        for prepared, vector in zip(ready, results, strict=True):
            try:
                outcome = _store(prepared, vector, space, options, on_outcome)
            except _CallerError as wrapped:  # the caller's own failure (e.g. a lost lease) ends the run
                raise wrapped.error
            except Exception as error:
                logger.exception("storing %s failed", prepared.item.source_ref)
                outcome = failed(prepared, f"could not be stored: {_short(error)}")
            finally:
                prepared.release()
            # An added item's outcome was reported inside its transaction.
            record(prepared, outcome, reported=outcome.status == ItemOutcome.ADDED)

    workers = decode_workers or settings.INGEST_DECODE_WORKERS
    # The model runs on its own thread (torch releases the GIL): while it embeds one batch, this
    # thread, which owns the database connection, stores the previous one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-embed") as model:
        embedding: tuple[list[_Prepared], Future] | None = None
        for batch in _batched(_prepare_all(items, embedder, workers), embedder.config.batch_size):
            ready = []
            for prepared in batch:
                first = prepared.first_copy
                if prepared.error:
                    record(prepared, failed(prepared, prepared.error))
                elif prepared.duplicate_of is not None:
                    record(prepared, _duplicate(prepared, prepared.duplicate_of))
                elif first is not None:  # its first copy may not be stored yet
                    record(prepared, failed(prepared, first.error) if first.error else _duplicate(prepared, None))
                else:
                    ready.append(prepared)
                    continue
                prepared.release()
            previous = embedding
            embedding = (ready, model.submit(embedder.embed_prepared, [p.tensor for p in ready])) if ready else None
            if previous is not None:
                store_all(*previous)
        if embedding is not None:
            store_all(*embedding)
    return IngestReport(outcomes=[outcomes[index] for index in sorted(outcomes)])


def _prepare_all(items: Iterable[IngestItem], embedder: ClipEmbedder, workers: int) -> Iterator[_Prepared]:
    """Read and hash items, then decode those not stored yet, in a thread pool, in order,
    keeping a bounded number in flight. Known hashes are looked up once per chunk, on this
    (the calling) thread, which owns the database connection."""
    min_side = max(embedder.input_size, settings.THUMBNAIL_MAX_SIDE)
    lookahead = max(2 * embedder.config.batch_size, 4)
    # The first copy of each hash while it is in flight, then only its outcome: a long run keeps
    # no thumbnails, spools or archive members of what it has finished.
    first_by_hash: dict[str, _Prepared | _Seen] = {}

    def finished(prepared: _Prepared, future: Future | None) -> _Prepared:
        if future is not None:
            future.result()  # _decode records its own failures on `prepared`
            first_by_hash[prepared.sha256] = _Seen(prepared.error)
        return prepared

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-decode") as pool:
        decoding: deque[tuple[_Prepared, Future | None]] = deque()
        for chunk in _batched(_read_all(items, pool, lookahead), embedder.config.batch_size):
            known = Image.objects.ids_by_hash(p.sha256 for p in chunk if not p.error)
            for prepared in chunk:
                future = None
                if prepared.error:
                    pass
                elif prepared.sha256 in known:
                    prepared.duplicate_of = known[prepared.sha256]
                    prepared.release()
                elif prepared.sha256 in first_by_hash:
                    prepared.first_copy = first_by_hash[prepared.sha256]
                    prepared.release()
                else:
                    first_by_hash[prepared.sha256] = prepared
                    future = pool.submit(_decode, prepared, embedder, min_side)
                decoding.append((prepared, future))
            while len(decoding) >= lookahead:
                yield finished(*decoding.popleft())
        while decoding:
            yield finished(*decoding.popleft())


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
        prepared.sha256 = hashlib.sha256(data).hexdigest()
        prepared.held = _hold(data)
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


def _decode(prepared: _Prepared, embedder: ClipEmbedder, min_side: int) -> None:
    try:
        decoded = decode_image(prepared.held, max_pixels=settings.IMAGE_MAX_PIXELS, min_side=min_side,
                               max_aspect_ratio=settings.IMAGE_MAX_ASPECT_RATIO)
        prepared.metadata = decoded.metadata
        prepared.thumbnail = make_thumbnail(decoded.image, max_side=settings.THUMBNAIL_MAX_SIDE)
        prepared.tensor = embedder.prepare_image(decoded.image)
    except ImageRejected as rejected:
        prepared.error = str(rejected)
    except Exception as error:  # MemoryError included: this item's failure, never the run's
        logger.exception("preparing %s failed", prepared.item.source_ref)
        prepared.error = f"could not be processed: {_short(error)}"
    if prepared.error:
        prepared.release()


def _hold(data: bytes):
    """Keep ``data`` until it is decoded and stored: small in memory, large in an anonymous
    temporary file (decode_image reads it from there)."""
    if len(data) <= IN_MEMORY_BYTES:
        return data
    spool = tempfile.TemporaryFile()
    try:
        spool.write(data)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _CallerError(Exception):
    """Wraps an exception raised by the caller's ``on_outcome``: it is the run's, not the item's."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _store(prepared: _Prepared, vector, space: EmbeddingSpace, options: IngestOptions,
           on_added: Callable[[ItemOutcome], None] | None) -> ItemOutcome:
    meta = prepared.metadata
    city = options.city
    if not city and meta.latitude is not None and meta.longitude is not None:
        city = geocode.city_at(meta.latitude, meta.longitude)
    shard = prepared.sha256[:2]
    file_name = f"images/{shard}/{prepared.sha256}.{EXTENSIONS.get(meta.format, 'img')}"
    thumb_name = f"thumbnails/{shard}/{prepared.sha256}.jpg"
    committed = False
    # Serialises workers storing the same bytes, so one's clean-up never removes a file the
    # other has just written and is about to commit a row for.
    with _content_lock(prepared.sha256):
        try:
            _write_once(file_name, prepared.held)
            _write_once(thumb_name, prepared.thumbnail)
            with transaction.atomic():
                image = Image.objects.create(
                    file=file_name, thumbnail=thumb_name, sha256=prepared.sha256,
                    original_name=prepared.item.name[:255], width=meta.width, height=meta.height,
                    city=city[:120], group_key=options.group_key[:120], taken_at=meta.taken_at,
                    latitude=meta.latitude, longitude=meta.longitude, source=options.source,
                    source_ref=prepared.item.source_ref[:1000], status=Image.Status.EMBEDDED,
                    added_by_id=options.added_by_id)
                Embedding.objects.create(image=image, space=space, vector=vector)
                outcome = ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.ADDED,
                                      image_id=image.pk, key=prepared.item.key)
                if on_added is not None:
                    try:
                        on_added(outcome)
                    except Exception as error:
                        raise _CallerError(error) from error
            committed = True
        except IntegrityError:
            # Another worker stored the same bytes between our check and our insert.
            existing = Image.objects.ids_by_hash([prepared.sha256]).get(prepared.sha256)
            if existing is not None:
                return _duplicate(prepared, existing)
            raise
        finally:
            if not committed:
                _remove_unreferenced([file_name, thumb_name])
    return outcome


@contextlib.contextmanager
def _content_lock(sha256: str):
    key = int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        except Exception:  # connection gone: the server released the lock with the session
            logger.warning("could not release the storage lock for %s", sha256, exc_info=True)


def _remove_unreferenced(names: list[str]) -> None:
    """Delete the content-addressed files of an item whose row did not commit, unless a
    committed row names them (best effort: never hides the original failure)."""
    try:
        referenced = set()
        for file, thumbnail in Image.objects.filter(Q(file__in=names) | Q(thumbnail__in=names)).values_list(
                "file", "thumbnail"):
            referenced.update((file, thumbnail))
        for name in names:
            if name not in referenced and default_storage.exists(name):
                default_storage.delete(name)
    except Exception:
        logger.warning("could not remove the files of an item that was not stored: %s", names, exc_info=True)


def _duplicate(prepared: _Prepared, existing_id: int | None) -> ItemOutcome:
    return ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.DUPLICATE, image_id=existing_id,
                       reason="already stored", key=prepared.item.key)


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


def _batched(iterable: Iterable[_Prepared], size: int) -> Iterator[list[_Prepared]]:
    batch: list[_Prepared] = []
    for element in iterable:
        batch.append(element)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
