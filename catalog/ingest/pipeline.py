"""The one ingestion pipeline every entry point feeds (folder, upload, URL, archive).

For each item: hash the bytes (the same bytes are never stored twice), decode
and validate, read metadata, make the thumbnail and the model input (in worker
threads, overlapping with the embedding of the previous batch), embed in
batches (on a thread of its own, overlapping with storing the batch before),
then store files and rows. An item is either stored completely (file,
thumbnail, row and vector, committed together) or not at all, so an
interrupted import is finished by running it again.

Callers that keep their own per-item records (import jobs) pass ``key`` on
each item and get it back on its outcome; the outcome of an added item is
reported inside the transaction that stores it, so such records commit with
the image or not at all.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from catalog import geocode
from catalog.embedder import ClipEmbedder, get_embedder
from catalog.imaging import ImageMetadata, ImageRejected, decode_image, make_thumbnail
from catalog.models import Embedding, EmbeddingSpace, Image

logger = logging.getLogger(__name__)

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
              "TIFF": "tif", "HEIF": "heic", "MPO": "jpg"}


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
    data: bytes = b""
    sha256: str = ""
    metadata: ImageMetadata | None = None
    thumbnail: bytes = b""
    tensor: object = None
    error: str = ""


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

    def store_all(ready: list[_Prepared], vectors: Future) -> None:
        for prepared, vector in zip(ready, vectors.result(), strict=True):
            outcome = _store(prepared, vector, space, options, on_outcome)
            # An added item's outcome was reported inside its transaction.
            record(prepared, outcome, reported=outcome.status == ItemOutcome.ADDED)

    seen_in_this_run: set[str] = set()
    workers = decode_workers or settings.INGEST_DECODE_WORKERS
    # The model runs on its own thread (torch releases the GIL): while it embeds one batch, this
    # thread, which owns the database connection, stores the previous one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-embed") as model:
        embedding: tuple[list[_Prepared], Future] | None = None
        for batch in _batched(_prepare_all(items, embedder, workers), embedder.config.batch_size):
            ready = []
            known = Image.objects.ids_by_hash(p.sha256 for p in batch if not p.error)
            for prepared in batch:
                if prepared.error:
                    record(prepared, ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.FAILED,
                                                 reason=prepared.error, key=prepared.item.key))
                elif prepared.sha256 in known:
                    record(prepared, _duplicate(prepared, known[prepared.sha256]))
                elif prepared.sha256 in seen_in_this_run:  # its first copy may not be stored yet
                    record(prepared, _duplicate(prepared, None))
                else:
                    seen_in_this_run.add(prepared.sha256)
                    ready.append(prepared)
            previous = embedding
            embedding = (ready, model.submit(embedder.embed_prepared, [p.tensor for p in ready])) if ready else None
            if previous is not None:
                store_all(*previous)
        if embedding is not None:
            store_all(*embedding)
    return IngestReport(outcomes=[outcomes[index] for index in sorted(outcomes)])


def _prepare_all(items: Iterable[IngestItem], embedder: ClipEmbedder, workers: int) -> Iterator[_Prepared]:
    """Prepare items in a thread pool, in order, keeping a bounded number in flight."""
    min_side = max(embedder.input_size, settings.THUMBNAIL_MAX_SIDE)
    lookahead = max(2 * embedder.config.batch_size, 4)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-decode") as pool:
        pending: deque[Future] = deque()
        for index, item in enumerate(items):
            pending.append(pool.submit(_prepare, item, index, embedder, min_side))
            if len(pending) >= lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _prepare(item: IngestItem, index: int, embedder: ClipEmbedder, min_side: int) -> _Prepared:
    prepared = _Prepared(item=item, index=index)
    try:
        prepared.data = item.read()
        prepared.sha256 = hashlib.sha256(prepared.data).hexdigest()
        decoded = decode_image(prepared.data, max_pixels=settings.IMAGE_MAX_PIXELS, min_side=min_side)
        prepared.metadata = decoded.metadata
        prepared.thumbnail = make_thumbnail(decoded.image, max_side=settings.THUMBNAIL_MAX_SIDE)
        prepared.tensor = embedder.prepare_image(decoded.image)
    except (ImageRejected, ItemRejected) as rejected:
        prepared.error = str(rejected)
    except OSError as error:  # unreadable file, vanished path
        prepared.error = f"cannot read file: {error.strerror or error}"
    return prepared


def _store(prepared: _Prepared, vector, space: EmbeddingSpace, options: IngestOptions,
           on_added: Callable[[ItemOutcome], None] | None) -> ItemOutcome:
    meta = prepared.metadata
    city = options.city
    if not city and meta.latitude is not None and meta.longitude is not None:
        city = geocode.city_at(meta.latitude, meta.longitude)
    shard = prepared.sha256[:2]
    file_name = _write_once(f"images/{shard}/{prepared.sha256}.{EXTENSIONS.get(meta.format, 'img')}",
                            prepared.data)
    thumb_name = _write_once(f"thumbnails/{shard}/{prepared.sha256}.jpg", prepared.thumbnail)
    try:
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
                on_added(outcome)
    except IntegrityError:
        # Another worker stored the same bytes between our check and our insert.
        existing = Image.objects.ids_by_hash([prepared.sha256]).get(prepared.sha256)
        if existing is not None:
            return _duplicate(prepared, existing)
        raise
    return outcome


def _duplicate(prepared: _Prepared, existing_id: int | None) -> ItemOutcome:
    return ItemOutcome(prepared.item.name, prepared.item.source_ref, ItemOutcome.DUPLICATE, image_id=existing_id,
                       reason="already stored", key=prepared.item.key)


def _write_once(name: str, data: bytes) -> str:
    """Store ``data`` under a content-addressed ``name``. A file left by an interrupted
    run is reused if complete and replaced if not, so re-runs never duplicate files."""
    if default_storage.exists(name):
        if default_storage.size(name) == len(data):
            return name
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(data))
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
