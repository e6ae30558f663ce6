"""Embed stored images that have no vector in an embedding space (a space being built, or images
left pending).

Several runs may go at once (the build jobs of catalog/jobs/builds.py on every worker): each
claims a batch with ``SELECT ... FOR UPDATE SKIP LOCKED`` and holds the claim only while it embeds
that batch, so no two do the same work, and a killed run loses nothing (its uncommitted claim is
simply released).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction

from catalog.embedder import ClipEmbedder
from catalog.imaging import ImageRejected, decode_image
from catalog.ingest.rows import copy_embeddings
from catalog.models import EmbeddingSpace, Image
from catalog.spaces import images_missing_from, lock_present

__all__ = ["BackfillReport", "embed_missing", "images_missing_from"]


@dataclass
class BackfillReport:
    embedded: int = 0
    failed: int = 0
    finished: bool = False  # nothing was left to claim (False: stopped at the deadline)


def embed_missing(*, space: EmbeddingSpace, embedder: ClipEmbedder,
                  on_batch: Callable[[int], None] | None = None, deadline: float | None = None) -> BackfillReport:
    """Embed ``space``'s missing images with ``embedder`` (the space's model), batch by batch, until
    none is left to claim or ``time.monotonic()`` passes ``deadline``."""
    report = BackfillReport()
    while deadline is None or time.monotonic() < deadline:
        with transaction.atomic():
            if not lock_present([space.pk]):  # dropped meanwhile
                report.finished = True
                return report
            batch = list(images_missing_from(space).order_by("pk")
                         .select_for_update(skip_locked=True, of=("self",))[:embedder.config.batch_size])
            if not batch:
                report.finished = True
                return report
            ready, tensors = [], []
            for image in batch:
                try:
                    with default_storage.open(image.file.name, "rb") as handle:
                        decoded = decode_image(handle.read(), max_pixels=settings.IMAGE_MAX_PIXELS,
                                               min_side=embedder.input_size)
                except (ImageRejected, FileNotFoundError) as error:  # the stored file is bad or gone, for good
                    image.mark_failed(f"cannot re-read stored file: {error}")
                    report.failed += 1
                    continue
                # Any other OSError (storage down, a timeout) ends this run with the batch rolled
                # back: marking the image failed would hide it from every space for good.
                ready.append(image)
                tensors.append(embedder.prepare_image(decoded.image))
            vectors = embedder.embed_prepared(tensors) if tensors else []
            copy_embeddings((image.pk, space.pk, vector) for image, vector in zip(ready, vectors, strict=True))
            Image.objects.filter(pk__in=[i.pk for i in ready]).update(status=Image.Status.EMBEDDED,
                                                                       status_reason="")
            report.embedded += len(ready)
        if on_batch is not None:
            on_batch(len(batch))
    return report
