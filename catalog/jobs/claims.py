"""Which worker may work on which items of an import job: claims, with leases, on the items.

Any number of workers share one job. A worker claims a chunk of pending items with
``SELECT ... FOR UPDATE SKIP LOCKED`` (two workers never wait for, or get, the same rows) and
writes its name and an expiry on them; a heartbeat thread pushes the expiry forward while it
works. Recording an item's outcome is conditional on still holding its claim, in the transaction
that stores the image, so no item is ever recorded twice. A worker killed mid-chunk stops
renewing; once its claims have run out the next worker to claim takes those items over.
Whoever finds nothing pending finishes the job, under the job row's lock: exactly one does.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone

from catalog.jobs.payloads import delete_payloads
from catalog.models import ImportItem, ImportJob

logger = logging.getLogger(__name__)


class ClaimLost(RuntimeError):
    """Another worker holds the item now (our claim ran out and was taken over), or it is gone."""


class Claim(enum.Enum):
    CLAIMED = "claimed"
    BUSY = "busy"  # every pending item is held by a live worker
    EMPTY = "empty"  # nothing pending: the job can be finished
    FINISHED = "finished"  # done or failed: nothing to do


@dataclass(frozen=True)
class ChunkClaim:
    outcome: Claim
    items: list[ImportItem] = field(default_factory=list)
    retry_at: datetime | None = None  # for BUSY: when the first of the others' claims runs out


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.IMPORT_LEASE_SECONDS)


def worker_name() -> str:
    """A name for one run of a worker, unique across machines; says where it ran (for the logs)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


def claim_chunk(job_id: uuid.UUID, owner: str, *, size: int, kind: str | None = None) -> ChunkClaim:
    """Claim up to ``size`` pending items of the job for ``owner``: unclaimed ones or ones whose
    claim ran out; only of ``kind`` if given. A chunk is of one kind (and one archive's members);
    an uploaded archive is a chunk of its own, claimed before anything else so that its members
    are out early."""
    now = timezone.now()
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_finished:
            return ChunkClaim(Claim.FINISHED)
        if job.attempts >= settings.IMPORT_MAX_ATTEMPTS:
            _mark_failed(job, f"gave up after {settings.IMPORT_MAX_ATTEMPTS} attempts; see the worker log")
            return ChunkClaim(Claim.FINISHED)
        claimable = (ImportItem.objects.select_for_update(skip_locked=True)
                     .filter(job_id=job_id, state=ImportItem.State.PENDING)
                     .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now)).order_by("id"))
        if kind is not None:
            claimable = claimable.filter(kind=kind)
        _take_back_expired(job, claimable)
        first = claimable.filter(kind=ImportItem.Kind.ARCHIVE).first() or claimable.first()
        if first is None:
            if kind is not None:
                return ChunkClaim(Claim.BUSY, retry_at=now)  # none of that kind; what else is left, the caller asks
            held = job.items.pending().aggregate(count=Count("id"), until=Min("claimed_until"))
            if not held["count"]:
                return ChunkClaim(Claim.EMPTY)
            return ChunkClaim(Claim.BUSY, retry_at=max(held["until"] or now, now))
        chunk = [first]
        # An item a worker died holding is claimed alone, so that one which kills its worker
        # takes no other item down with it again.
        if first.kind != ImportItem.Kind.ARCHIVE and size > 1 and not first.attempts:
            chunk += claimable.filter(kind=first.kind, parent_id=first.parent_id, id__gt=first.id,
                                      attempts=0)[:size - 1]
        until = now + lease_duration()
        ImportItem.objects.filter(pk__in=[item.pk for item in chunk]).update(claimed_by=owner, claimed_until=until)
        for item in chunk:
            item.claimed_by, item.claimed_until = owner, until
        job.state = ImportJob.State.RUNNING
        job.started_at = job.started_at or now
        job.save(update_fields=["attempts", "state", "started_at"])
    return ChunkClaim(Claim.CLAIMED, chunk)


def _take_back_expired(job: ImportJob, claimable) -> None:
    """Free the items whose claims ran out (their worker died or stalled holding them), each
    counting one try; an item out of tries fails alone, with a reason, and the job goes on."""
    expired = list(claimable.exclude(claimed_by="").values_list("pk", "claimed_by"))
    if not expired:
        return
    logger.warning("import %s: taking back %d item(s) from %s, whose claims ran out", job.pk, len(expired),
                   sorted({owner for _, owner in expired}))
    ids = [pk for pk, _ in expired]
    ImportItem.objects.filter(pk__in=ids).update(attempts=F("attempts") + 1, claimed_by="", claimed_until=None)
    limit = settings.IMPORT_MAX_ATTEMPTS
    spent = ImportItem.objects.filter(pk__in=ids, attempts__gte=limit).update(
        state=ImportItem.State.FAILED, updated_at=timezone.now(),
        error=f"its worker stopped while importing it {limit} time(s) (out of memory, or killed); "
              f"see the worker log")
    if spent:
        ImportJob.objects.filter(pk=job.pk).update(failed=F("failed") + spent)


def has_claimable(job_id: uuid.UUID) -> bool:
    """Whether another worker could claim something of the job right now."""
    return ImportItem.objects.filter(job_id=job_id, state=ImportItem.State.PENDING).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lte=timezone.now())).exists()


def renew(job_id: uuid.UUID, owner: str) -> int:
    """Push the expiry of ``owner``'s claims forward; returns how many were renewed. Items locked
    right now are left for the next beat: they are ours, being recorded by our own store
    transaction, and waiting for them while holding others would deadlock with it."""
    with transaction.atomic():
        ids = list(ImportItem.objects.select_for_update(skip_locked=True).filter(
            job_id=job_id, claimed_by=owner, state=ImportItem.State.PENDING).values_list("pk", flat=True))
        return ImportItem.objects.filter(pk__in=ids).update(claimed_until=timezone.now() + lease_duration())


def release(job_id: uuid.UUID, owner: str, *, failed_try: bool = False) -> None:
    """Give back ``owner``'s unfinished items, so that another worker need not wait for the
    claims to run out; ``failed_try``: after an error, which counts towards IMPORT_MAX_ATTEMPTS."""
    ImportItem.objects.filter(job_id=job_id, claimed_by=owner, state=ImportItem.State.PENDING).update(
        claimed_by="", claimed_until=None)
    if failed_try:
        ImportJob.objects.filter(pk=job_id).update(attempts=F("attempts") + 1)


def progressed(job_id: uuid.UUID) -> None:
    """A chunk was worked through: failed tries in a row start over."""
    ImportJob.objects.filter(pk=job_id, attempts__gt=0).update(attempts=0)


def finish(job_id: uuid.UUID) -> bool:
    """Mark the job done if nothing is pending, its counts recounted from the items; True if
    this call did it (the job row's lock makes it exactly one of the workers)."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_finished or job.items.pending().exists():
            return False
        job.close(ImportJob.State.DONE)
        transaction.on_commit(partial(delete_payloads, job.payload_folder))
    return True


def fail_job(job_id: uuid.UUID, reason: str) -> None:
    """Fail the job as a whole (e.g. the model cannot be loaded); its workers stop at their next claim."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().filter(pk=job_id).first()
        if job is not None and not job.is_finished:
            _mark_failed(job, reason)


def _mark_failed(job: ImportJob, reason: str) -> None:
    job.state, job.error = ImportJob.State.FAILED, reason[:2000]
    job.finished_at = timezone.now()
    job.save(update_fields=["state", "error", "finished_at"])
    # A failed job keeps no uploads (they are never served, and never kept): retry_job fails those items.
    transaction.on_commit(partial(delete_payloads, job.payload_folder))


class Heartbeat:
    """Renews ``owner``'s claims from a thread (with its own DB connection) every third of the
    lease, so slow steps (model loading, a slow download) never let them lapse while it lives."""

    def __init__(self, job_id: uuid.UUID, owner: str):
        self.job_id, self.owner = job_id, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"import-claims-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = settings.IMPORT_LEASE_SECONDS / 3
        try:
            while not self._stop.wait(interval):
                try:
                    renew(self.job_id, self.owner)
                except Exception:  # a blip in the database: try again next beat
                    logger.exception("import %s: could not renew the claims", self.job_id)
        finally:
            connection.close()
