"""Embed stored images that have no vector in the current model's space.

Used after a model switch (and for images left pending). Several runs may go
at once: each claims a batch with ``SELECT ... FOR UPDATE SKIP LOCKED`` and
holds the claim only while it embeds that batch, so no two do the same work,
and a killed run loses nothing (its uncommitted claim is simply released).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction

from catalog.embedder import ClipEmbedder, get_embedder
from catalog.imaging import ImageRejected, decode_image
from catalog.models import Embedding, EmbeddingSpace, Image


@dataclass
class BackfillReport:
    embedded: int = 0
    failed: int = 0


def images_missing_from(space: EmbeddingSpace):
    return Image.objects.exclude(embeddings__space=space).exclude(status=Image.Status.FAILED)


def embed_missing(*, embedder: ClipEmbedder | None = None,
                  on_batch: Callable[[int], None] | None = None) -> BackfillReport:
    embedder = embedder or get_embedder()
    space = EmbeddingSpace.objects.ensure(name=embedder.space_name, dimensions=embedder.dimensions)
    report = BackfillReport()
    while True:
        with transaction.atomic():
            batch = list(images_missing_from(space).order_by("pk")
                         .select_for_update(skip_locked=True, of=("self",))[:embedder.config.batch_size])
            if not batch:
                return report
            ready, tensors = [], []
            for image in batch:
                try:
                    with default_storage.open(image.file.name, "rb") as handle:
                        decoded = decode_image(handle.read(), max_pixels=settings.IMAGE_MAX_PIXELS,
                                               min_side=embedder.input_size)
                except (ImageRejected, OSError) as error:
                    image.mark_failed(f"cannot re-read stored file: {error}")
                    report.failed += 1
                    continue
                ready.append(image)
                tensors.append(embedder.prepare_image(decoded.image))
            vectors = embedder.embed_prepared(tensors) if tensors else []
            Embedding.objects.bulk_create(
                [Embedding(image=image, space=space, vector=vector) for image, vector in zip(ready, vectors)])
            Image.objects.filter(pk__in=[i.pk for i in ready]).update(status=Image.Status.EMBEDDED,
                                                                       status_reason="")
            report.embedded += len(ready)
        if on_batch is not None:
            on_batch(len(batch))
