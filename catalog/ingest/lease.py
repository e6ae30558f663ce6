"""Which worker may work on an import job: a lease on the job row.

A worker claims a job by locking its row (``select_for_update(skip_locked=True)``) and writing
its owner token and an expiry; a heartbeat thread pushes the expiry forward while it works.
Every write a worker makes to a job's items is conditional on still owning the lease, in the
same transaction, so two workers never record the same work. A worker killed mid-job stops
renewing; once the lease runs out the next worker to look (see ``catalog.tasks``) takes over.
"""

from __future__ import annotations

import enum
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from catalog.models import ImportJob

logger = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """Another worker owns the job now (ours expired, or the job was deleted)."""


class Claim(enum.Enum):
    CLAIMED = "claimed"
    BUSY = "busy"  # a live worker holds it
    FINISHED = "finished"  # done or failed: nothing to do


@dataclass(frozen=True)
class ClaimResult:
    outcome: Claim
    job: ImportJob | None = None
    retry_at: datetime | None = None  # for BUSY: when the holder's lease runs out


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.IMPORT_LEASE_SECONDS)


def claim(job_id: uuid.UUID, owner: str) -> ClaimResult:
    """Take the job for ``owner`` if it is unfinished and nobody live holds it."""
    now = timezone.now()
    with transaction.atomic():
        job = ImportJob.objects.select_for_update(skip_locked=True).filter(pk=job_id).first()
        if job is None:
            if not ImportJob.objects.filter(pk=job_id).exists():
                return ClaimResult(Claim.FINISHED)  # deleted
            # Locked this instant by its holder recording progress: it is alive.
            return ClaimResult(Claim.BUSY, retry_at=now + lease_duration())
        if job.is_finished:
            return ClaimResult(Claim.FINISHED, job)
        if job.lease_owner and job.lease_expires_at and job.lease_expires_at > now:
            return ClaimResult(Claim.BUSY, job, retry_at=job.lease_expires_at)
        if job.lease_owner:
            logger.warning("import %s: taking over from worker %s, whose lease ran out", job.pk, job.lease_owner)
        job.attempts += 1
        if job.attempts > settings.IMPORT_MAX_ATTEMPTS:
            _mark_failed(job, f"gave up after {settings.IMPORT_MAX_ATTEMPTS} attempts; see the worker log")
            return ClaimResult(Claim.FINISHED, job)
        job.state = ImportJob.State.RUNNING
        job.lease_owner, job.lease_expires_at = owner, now + lease_duration()
        job.started_at = job.started_at or now
        job.save(update_fields=["attempts", "state", "lease_owner", "lease_expires_at", "started_at"])
    return ClaimResult(Claim.CLAIMED, job)


def renew(job_id: uuid.UUID, owner: str) -> bool:
    """Push the lease's expiry forward; False if ``owner`` no longer holds it."""
    return bool(ImportJob.objects.filter(pk=job_id, lease_owner=owner).update(
        lease_expires_at=timezone.now() + lease_duration()))


def release(job_id: uuid.UUID, owner: str, *, progressed: bool = False) -> None:
    """Give the job back unfinished: at the end of a time slice (``progressed``: the attempt
    count starts over, it counts claims in a row that got nowhere), or after an unexpected
    error, so that a retry need not wait for the lease to run out."""
    reset = {"attempts": 0} if progressed else {}
    ImportJob.objects.filter(pk=job_id, lease_owner=owner).update(lease_owner="", lease_expires_at=None, **reset)


def locked_job(job_id: uuid.UUID, owner: str) -> ImportJob:
    """The job row, locked for the current transaction; raises LeaseLost unless ``owner`` holds it."""
    job = ImportJob.objects.select_for_update().filter(pk=job_id, lease_owner=owner).first()
    if job is None:
        raise LeaseLost(f"import {job_id}: lease lost")
    return job


def fail(job_id: uuid.UUID, owner: str, reason: str) -> None:
    with transaction.atomic():
        _mark_failed(locked_job(job_id, owner), reason)


def _mark_failed(job: ImportJob, reason: str) -> None:
    job.state, job.error = ImportJob.State.FAILED, reason[:2000]
    job.finished_at = timezone.now()
    job.lease_owner, job.lease_expires_at = "", None
    job.save(update_fields=["state", "error", "finished_at", "lease_owner", "lease_expires_at"])
    # A failed job keeps no uploads (they are never served, and never kept): retry_job fails those items.
    from catalog.ingest.jobs import delete_payloads

    transaction.on_commit(partial(delete_payloads, job.payload_folder))


class Heartbeat:
    """Renews the lease from a thread (with its own DB connection) every third of its length, so
    slow steps (model loading, a slow download) never let it lapse while the worker is alive."""

    def __init__(self, job_id: uuid.UUID, owner: str):
        self.job_id, self.owner = job_id, owner
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"import-lease-{job_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"import {self.job_id}: lease lost")

    def _run(self) -> None:
        interval = settings.IMPORT_LEASE_SECONDS / 3
        try:
            while not self._stop.wait(interval):
                try:
                    if not renew(self.job_id, self.owner):
                        self.lost.set()
                        return
                except Exception:  # a blip in the database: try again next beat
                    logger.exception("import %s: could not renew the lease", self.job_id)
        finally:
            connection.close()
