"""Building an embedding space in the background: every image missing from it is embedded by
whichever workers are free, resumably.

``start_build`` (``manage.py models build``, the admin) records the space as *building* and queues
``run_space_build``. A run claims batches of missing images with ``SELECT ... FOR UPDATE SKIP
LOCKED`` (catalog.ingest.backfill), so any number of workers share one build and a killed one
loses only its uncommitted batch; it invites an idle worker to join while more than a batch is
left, yields after IMPORT_SLICE_SECONDS and queues its continuation. Before working it queues a
watch one lease later: that resumes the build if this worker dies, and once nothing is missing it
looks a last time for images stored meanwhile by imports that began before the build.
Progress is the space's coverage (catalog.spaces.space_status), shown by ``manage.py models``,
the admin and ``GET /api/spaces/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from catalog import spaces
from catalog.embedder import EmbedderUnavailable, get_embedder
from catalog.ingest.backfill import embed_missing
from catalog.models import EmbeddingSpace
from catalog.vector_search import refresh_planner_statistics

logger = logging.getLogger(__name__)
State = EmbeddingSpace.State


@dataclass(frozen=True)
class BuildScheduler:
    """How a build queues its next runs (catalog.jobs.tasks): ``enqueue(space_id, run_after=None)``,
    ``has_waiting(space_id, due_now=False)``, ``invite(space_id)``."""

    enqueue: Callable[..., None]
    has_waiting: Callable[..., bool]
    invite: Callable[[int], None]


def start_build(*, architecture: str, pretrained: str = "", weights_file: str | Path | None = None,
                enqueue: Callable[[int], None]) -> EmbeddingSpace:
    """Record the space of this model as building (created with its index if new) and queue its
    build once committed. A new space's model is loaded first: one that cannot load is refused here
    (raises EmbedderUnavailable), not in the workers. Building again resumes a build, rebuilds a retired
    space's missing vectors, or fills in the active space's (after a switch with ``--force``)."""
    if weights_file is not None and not Path(weights_file).is_file():
        raise EmbedderUnavailable(f"The weights file {weights_file} does not exist.")
    config = spaces.config_for(architecture=architecture, pretrained=pretrained, weights_file=weights_file)
    known = EmbeddingSpace.objects.filter(name=config.space_name).exclude(architecture="").first()
    # A known space's build is resumed without loading its model here (the admin calls this inside a
    # web request); its workers load it and record on the space why it could not load.
    dimensions = known.dimensions if known is not None else get_embedder(config).dimensions
    # Made (with its index) before the transaction, so that the index is built CONCURRENTLY.
    space = spaces.ensure_space(config=config, dimensions=dimensions, state=State.BUILDING)
    if not space.has_index():  # its maker died before building it, or while building it
        space.repair_index_concurrently()
    with transaction.atomic():
        space = EmbeddingSpace.objects.select_for_update().get(pk=space.pk)
        if space.state != State.ACTIVE:  # the active one (switched with --force) is only filled in
            space.state = State.BUILDING
        space.error = ""
        space.save(update_fields=["state", "error"])
        transaction.on_commit(lambda: enqueue(space.pk))
    return space


def after_switch(space_id: int, *, enqueue: Callable[..., None]) -> None:
    """Queue a fill-in of a space just made active, one lease later: images that imports stored
    around the switch into the old space only (embedded just before it, or by a process that
    cannot load the new model) are embedded into the new one too."""
    enqueue(space_id, run_after=timezone.now() + timedelta(seconds=settings.IMPORT_LEASE_SECONDS))


def run_build(space_id: int, *, scheduler: BuildScheduler) -> str:
    """One run of a space's build, for up to IMPORT_SLICE_SECONDS; returns a one-word result."""
    space = EmbeddingSpace.objects.filter(pk=space_id).first()
    if space is None or space.state == State.RETIRED:
        return "finished"  # dropped or retired meanwhile: nothing to do
    deadline = time.monotonic() + settings.IMPORT_SLICE_SECONDS
    try:
        embedder = spaces.embedder_for(space)
    except EmbedderUnavailable as error:
        _record_error(space_id, f"The model could not be loaded: {error}")
        return "failed"
    if not spaces.images_missing_from(space).exists():
        return "done"
    _watch(scheduler, space_id, timezone.now() + timedelta(seconds=settings.IMPORT_LEASE_SECONDS))
    if spaces.images_missing_from(space)[embedder.config.batch_size:].exists() and \
            not scheduler.has_waiting(space_id, due_now=True):
        scheduler.invite(space_id)
    try:
        report = embed_missing(space=space, embedder=embedder, deadline=deadline)
    except Exception as error:
        _record_error(space_id, f"The build stopped: {error}"[:2000])
        raise  # the watch queued above tries again
    if report.embedded:
        refresh_planner_statistics()
    if report.failed:
        logger.warning("building %s: %d image(s) could not be re-read (marked failed)", space.name, report.failed)
    if report.finished:
        return "done"
    if not scheduler.has_waiting(space_id, due_now=True):
        scheduler.enqueue(space_id)
    return "continued"


def resume_builds(*, scheduler: BuildScheduler) -> list[int]:
    """Queue the build of every building space that has none waiting (its tasks were lost, e.g. a
    queue emptied by hand); returns the space ids queued. Run at start (``manage.py resume_imports``)."""
    queued = []
    for space in EmbeddingSpace.objects.filter(state=State.BUILDING).exclude(architecture="").order_by("pk"):
        if spaces.images_missing_from(space).exists() and not scheduler.has_waiting(space.pk):
            scheduler.enqueue(space.pk)
            queued.append(space.pk)
    return queued


def _watch(scheduler: BuildScheduler, space_id: int, at: datetime) -> None:
    if not scheduler.has_waiting(space_id):
        scheduler.enqueue(space_id, run_after=at)


def _record_error(space_id: int, message: str) -> None:
    logger.error("building space %s: %s", space_id, message)
    EmbeddingSpace.objects.filter(pk=space_id).update(error=message)
