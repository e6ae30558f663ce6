"""Import jobs, the worker side: claim a job, expand its archives, feed its pending items through
the one ingestion pipeline, record each outcome on its item, finish.

Re-running is always safe: only pending items are fed, each outcome is written in one
transaction with the item's state and the job's counts (for an added image, the same
transaction that stores it), and all of it only while this worker holds the job's lease.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from catalog import tasks
from catalog.embedder import EmbedderUnavailable
from catalog.ingest import lease
from catalog.ingest.archives import ArchiveLimits, ArchiveRejected, iter_archive
from catalog.ingest.jobs import delete_payloads
from catalog.ingest.pipeline import IngestItem, IngestOptions, ItemOutcome, ItemRejected, ingest_items
from catalog.ingest.remote import FetchPolicy, FetchRejected, fetch_url
from catalog.models import Image, ImportItem, ImportJob

logger = logging.getLogger(__name__)

# Name resolution for URL imports; tests swap in a stub so nothing leaves the machine.
resolver = socket.getaddrinfo
# A later look at a job held by another worker waits this much past its lease.
WATCH_MARGIN = timedelta(seconds=1)

_STATE_FOR = {ItemOutcome.ADDED: ImportItem.State.ADDED, ItemOutcome.DUPLICATE: ImportItem.State.DUPLICATE,
              ItemOutcome.FAILED: ImportItem.State.FAILED}
_COUNTER_FOR = {ItemOutcome.ADDED: "added", ItemOutcome.DUPLICATE: "duplicates", ItemOutcome.FAILED: "failed"}


def run_job(job_id: uuid.UUID) -> str:
    """Work on the job for up to IMPORT_SLICE_SECONDS, then queue its continuation (so a worker
    asked to stop, or other jobs, wait at most that long); finish it when nothing is left.
    Returns a one-word result."""
    owner = secrets.token_hex(16)
    claimed = lease.claim(job_id, owner)
    if claimed.outcome is lease.Claim.FINISHED:
        return "finished"
    if claimed.outcome is lease.Claim.BUSY:
        # Look again when the holder's lease runs out: if it died, this is how its job resumes.
        _watch(job_id, claimed.retry_at)
        return "busy"
    # Our own watch, queued before any work: if this process is killed, a later worker
    # finds the job (lease expired) and carries on.
    _watch(job_id, timezone.now() + lease.lease_duration())
    job = claimed.job
    deadline = time.monotonic() + settings.IMPORT_SLICE_SECONDS
    with lease.Heartbeat(job_id, owner) as heartbeat:
        try:
            _expand_archives(job, owner, heartbeat)
            recorded = _ingest_pending(job, owner, heartbeat, deadline)
            if job.items.pending().exists():
                if not recorded:
                    raise RuntimeError(f"import {job_id}: a pass over its pending items recorded nothing")
                lease.release(job_id, owner, progressed=True)
                transaction.on_commit(partial(tasks.enqueue_import, job_id))
                return "continued"
            _finish(job_id, owner)
        except lease.LeaseLost:
            logger.warning("import %s: another worker took over", job_id)
            return "lost"
        except EmbedderUnavailable as error:
            lease.fail(job_id, owner, f"The model could not be loaded: {error}")
            return "failed"
        except BaseException:
            lease.release(job_id, owner)  # the queued watch retries it (up to IMPORT_MAX_ATTEMPTS)
            raise
    return "done"


def _watch(job_id: uuid.UUID, at) -> None:
    # One waiting task per job is enough to keep it alive; don't start a second chain.
    if not tasks.has_queued_import(job_id):
        transaction.on_commit(partial(tasks.enqueue_import, job_id, run_after=at + WATCH_MARGIN))


# --------------------------------------------------------------------------
# archives -> member items


def _expand_archives(job: ImportJob, owner: str, heartbeat: lease.Heartbeat) -> None:
    """Give each pending uploaded archive one item per member (all in one transaction)."""
    for archive in job.items.filter(kind=ImportItem.Kind.ARCHIVE, state=ImportItem.State.PENDING):
        members, error = [], ""
        try:
            with default_storage.open(archive.payload, "rb") as fh:
                # Names and per-member errors only: the bytes are read again when ingested.
                for index, member in enumerate(iter_archive(fh, limits=archive_limits(), keep_data=False)):
                    heartbeat.check()
                    members.append(ImportItem(
                        job=job, kind=ImportItem.Kind.MEMBER, parent=archive, member_index=index,
                        name=member.name[:1024],
                        state=ImportItem.State.FAILED if member.error else ImportItem.State.PENDING,
                        error=member.error or ""))
        except ArchiveRejected as rejected:
            members, error = [], str(rejected)
        except OSError as oserror:
            members, error = [], f"cannot read the uploaded archive: {oserror.strerror or oserror}"
        if not members and not error:
            error = "the archive holds no files"
        with transaction.atomic():
            lease.locked_job(job.pk, owner)
            if error:
                archive.state, archive.error = ImportItem.State.FAILED, error
                archive.save(update_fields=["state", "error", "updated_at"])
                ImportJob.objects.filter(pk=job.pk).update(failed=F("failed") + 1)
            else:
                ImportItem.objects.bulk_create(members, batch_size=1000)
                archive.state = ImportItem.State.EXPANDED
                archive.save(update_fields=["state", "updated_at"])
                failed = sum(1 for m in members if m.state == ImportItem.State.FAILED)
                ImportJob.objects.filter(pk=job.pk).update(total=F("total") + len(members) - 1,
                                                           failed=F("failed") + failed)


# --------------------------------------------------------------------------
# pending items -> pipeline


class _Recorder:
    """The pipeline's ``on_outcome``: writes the outcome on its item and the job's counts, only
    while we hold the lease. For an added image it runs inside the transaction that stores it."""

    def __init__(self, job_id: uuid.UUID, owner: str, heartbeat: lease.Heartbeat):
        self.job_id, self.owner, self.heartbeat = job_id, owner, heartbeat
        self.count = 0

    def __call__(self, outcome: ItemOutcome) -> None:
        self.heartbeat.check()
        counter = _COUNTER_FOR[outcome.status]
        with transaction.atomic(savepoint=False):
            # Locks the job row: a worker taking over waits for this transaction or sees it busy.
            if not ImportJob.objects.filter(pk=self.job_id, lease_owner=self.owner).update(
                    **{counter: F(counter) + 1}):
                raise lease.LeaseLost(f"import {self.job_id}: lease lost")
            updated = ImportItem.objects.filter(pk=outcome.key, state=ImportItem.State.PENDING).update(
                state=_STATE_FOR[outcome.status], image_id=outcome.image_id,
                error=(outcome.reason or "failed")[:2000] if outcome.status == ItemOutcome.FAILED else "",
                updated_at=timezone.now())
            if not updated:
                raise lease.LeaseLost(f"import {self.job_id}: item {outcome.key} was recorded elsewhere")
        self.count += 1


def _ingest_pending(job: ImportJob, owner: str, heartbeat: lease.Heartbeat, deadline: float) -> int:
    """Feed pending items to the pipeline until ``deadline``; returns how many were recorded."""
    record = _Recorder(job.pk, owner, heartbeat)

    def ingest(items: Iterator[IngestItem], source: str) -> None:
        if time.monotonic() < deadline or not record.count:
            ingest_items(_until(deadline, items),
                         options=IngestOptions(source=source, city=job.city, group_key=job.group_key,
                                               added_by_id=job.created_by_id),
                         on_outcome=record)

    pending = job.items.pending()
    uploads = list(pending.filter(kind=ImportItem.Kind.UPLOAD))
    if uploads:
        ingest((IngestItem(name=i.name, source_ref=i.name, read=partial(_read_payload, i.payload), key=i.pk)
                for i in uploads), Image.Source.UPLOAD)
    urls = list(pending.filter(kind=ImportItem.Kind.URL))
    if urls:
        ingest((IngestItem(name=i.name, source_ref=i.url, read=partial(_fetch, i.url), key=i.pk)
                for i in urls), Image.Source.URL)
    for archive in job.items.filter(kind=ImportItem.Kind.ARCHIVE, state=ImportItem.State.EXPANDED):
        members = {m.member_index: m for m in archive.members.pending()}
        if members:
            ingest(_member_items(archive, members), Image.Source.ARCHIVE)
    return record.count


def _until(deadline: float, items: Iterator[IngestItem]) -> Iterator[IngestItem]:
    """Stop handing out new items once the slice is over (always at least one: progress);
    the pipeline still finishes those it holds."""
    for count, item in enumerate(items):
        if count and time.monotonic() >= deadline:
            return
        yield item


def _member_items(archive: ImportItem, pending: dict[int, ImportItem]) -> Iterator[IngestItem]:
    """Pending members of an expanded archive, read from it again in one pass. The archive is
    the same bytes as when it was expanded, so member positions are stable."""
    problem = ""
    try:
        with default_storage.open(archive.payload, "rb") as fh:
            for index, member in enumerate(iter_archive(fh, limits=archive_limits())):
                item = pending.pop(index, None)
                if item is not None:
                    yield _member_item(archive, item, member, member.error)
    except ArchiveRejected as rejected:
        problem = str(rejected)
    except OSError as error:
        problem = f"cannot read the uploaded archive: {error.strerror or error}"
    for item in pending.values():  # what a changed or unreadable archive no longer yields
        yield _member_item(archive, item, None, problem or "no longer in the archive")


def _member_item(archive: ImportItem, item: ImportItem, member, error: str | None) -> IngestItem:
    return IngestItem(name=item.name, source_ref=f"{archive.name}:{item.name}",
                      read=partial(_member_bytes, member, error), key=item.pk)


def _member_bytes(member, error: str | None) -> bytes:
    # Read in the decode worker: the member waits in its spool, not in memory, until then.
    data = member.read() if member is not None and error is None else None
    if data is None:
        raise ItemRejected(error or "unreadable archive member")
    return data


def _read_payload(name: str) -> bytes:
    with default_storage.open(name, "rb") as fh:
        return fh.read()


def _fetch(url: str) -> bytes:
    try:
        return fetch_url(url, policy=fetch_policy(), resolver=resolver).data
    except FetchRejected as rejected:
        raise ItemRejected(str(rejected)) from None


def fetch_policy() -> FetchPolicy:
    return FetchPolicy(timeout=settings.FETCH_TIMEOUT, total_timeout=settings.FETCH_TOTAL_TIMEOUT,
                       max_bytes=settings.FETCH_MAX_BYTES, max_redirects=settings.FETCH_MAX_REDIRECTS,
                       allowed_hosts=frozenset(settings.FETCH_ALLOWED_HOSTS))


def archive_limits() -> ArchiveLimits:
    return ArchiveLimits(max_members=settings.ARCHIVE_MAX_MEMBERS, max_total_bytes=settings.ARCHIVE_MAX_TOTAL_BYTES,
                         max_member_bytes=min(settings.ARCHIVE_MAX_MEMBER_BYTES, settings.IMPORT_MAX_UPLOAD_BYTES))


# --------------------------------------------------------------------------
# finish


def _finish(job_id: uuid.UUID, owner: str) -> None:
    with transaction.atomic():
        job = lease.locked_job(job_id, owner)
        if job.items.pending().exists():
            raise RuntimeError(f"import {job_id}: items left pending after a full pass")
        counts = job.items.counts()
        job.total, job.added, job.duplicates, job.failed = (
            counts["total"], counts["added"], counts["duplicates"], counts["failed"])
        job.state, job.finished_at = ImportJob.State.DONE, timezone.now()
        job.lease_owner, job.lease_expires_at = "", None
        job.save(update_fields=["total", "added", "duplicates", "failed", "state", "finished_at", "lease_owner",
                                "lease_expires_at"])
        transaction.on_commit(partial(delete_payloads, job.payload_folder))
