"""Import jobs, the worker side: claim a chunk of a job's items, expand it (an archive) or feed it
through the one ingestion pipeline, record each outcome on its item, and go on with the next
chunk until the time slice is over; whoever finds nothing pending finishes the job.

Any number of workers run one job at once (see ``claims``). Re-running is always safe: only
pending items are claimed, and each outcome is written in one transaction with the item's state
and the job's counts (for an added image, the transaction that stores it), only while the
worker still holds the item's claim. The worker schedules the job's next runs through the
``Scheduler`` its caller (``catalog.jobs.tasks``) hands it; it runs outside any transaction, so
what it queues is queued at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from catalog.embedder import EmbedderUnavailable
from catalog.ingest import manifests
from catalog.ingest.archives import ArchiveLimits, ArchiveRejected, iter_archive
from catalog.ingest.manifests import metadata_from_json
from catalog.ingest.pipeline import IngestItem, IngestOptions, ItemOutcome, ItemRejected, ingest_items
from catalog.ingest.remote import FetchPolicy, FetchRejected, fetch_url
from catalog.jobs import claims
from catalog.models import Image, ImportItem, ImportJob

logger = logging.getLogger(__name__)

# Name resolution for URL imports; tests swap in a stub so nothing leaves the machine.
resolver = socket.getaddrinfo
# A later look at a job held by other workers waits this much past their claims.
WATCH_MARGIN = timedelta(seconds=1)

_STATE_FOR = {ItemOutcome.ADDED: ImportItem.State.ADDED, ItemOutcome.DUPLICATE: ImportItem.State.DUPLICATE,
              ItemOutcome.FAILED: ImportItem.State.FAILED}
_COUNTER_FOR = {ItemOutcome.ADDED: "added", ItemOutcome.DUPLICATE: "duplicates", ItemOutcome.FAILED: "failed"}
_SOURCE_FOR = {ImportItem.Kind.UPLOAD: Image.Source.UPLOAD, ImportItem.Kind.URL: Image.Source.URL,
               ImportItem.Kind.MEMBER: Image.Source.ARCHIVE}


@dataclass(frozen=True)
class Scheduler:
    """How the worker queues the job's next runs: ``enqueue(job_id, run_after=None)``;
    ``has_waiting(job_id, due_now=False)`` (a task for the job is queued; ``due_now``: runnable now);
    ``invite(job_id)``: queue a task for another worker to join in (a no-op where tasks run inline);
    ``finished(job_id)``: the job is done (called once, by the worker that finished it)."""

    enqueue: Callable[..., None]
    has_waiting: Callable[..., bool]
    invite: Callable[[uuid.UUID], None]
    finished: Callable[[uuid.UUID], None] = lambda job_id: None


def run_job(job_id: uuid.UUID, *, scheduler: Scheduler) -> str:
    """Work on the job, chunk by chunk, for up to IMPORT_SLICE_SECONDS, then queue its
    continuation (so a worker asked to stop, or other jobs, wait at most that long); finish it
    when nothing is left. Returns a one-word result."""
    owner = claims.worker_name()
    deadline = time.monotonic() + settings.IMPORT_SLICE_SECONDS
    worked = False
    while True:
        claimed = claims.claim_chunk(job_id, owner, size=settings.IMPORT_CHUNK_SIZE)
        if claimed.outcome is claims.Claim.FINISHED:
            return "done" if worked else "finished"
        if claimed.outcome is claims.Claim.EMPTY:
            _finish(scheduler, job_id)
            return "done"
        if claimed.outcome is claims.Claim.BUSY:
            # Look again when their claims run out: if a worker died, this is how its items resume.
            _watch(scheduler, job_id, claimed.retry_at)
            return "busy"
        if not worked:
            # Our own watch, queued before any work: if this process is killed, a later worker
            # takes its claims over once they run out.
            _watch(scheduler, job_id, timezone.now() + claims.lease_duration())
        _invite(scheduler, job_id)
        with claims.Heartbeat(job_id, owner):
            try:
                if claimed.items[0].kind == ImportItem.Kind.ARCHIVE:
                    _expand_archive(job_id, claimed.items[0], owner)
                else:
                    _ingest_chunks(job_id, claimed.items, owner, deadline, scheduler)
            except claims.ClaimLost:
                logger.warning("import %s: another worker took over", job_id)
                claims.release(job_id, owner)
                return "lost"
            except EmbedderUnavailable as error:
                claims.fail_job(job_id, f"The model could not be loaded: {error}")
                claims.release(job_id, owner)
                return "failed"
            except BaseException:
                claims.release(job_id, owner, failed_try=True)  # a queued task tries again
                raise
        claims.progressed(job_id)
        worked = True
        if time.monotonic() >= deadline:
            if not ImportItem.objects.filter(job_id=job_id, state=ImportItem.State.PENDING).exists():
                _finish(scheduler, job_id)
                return "done"
            if not scheduler.has_waiting(job_id, due_now=True):
                scheduler.enqueue(job_id)
            return "continued"


def _finish(scheduler: Scheduler, job_id: uuid.UUID) -> None:
    if claims.finish(job_id):
        scheduler.finished(job_id)


def _watch(scheduler: Scheduler, job_id: uuid.UUID, at: datetime) -> None:
    # One waiting task per job is enough to keep it alive; don't start a second chain.
    if not scheduler.has_waiting(job_id):
        scheduler.enqueue(job_id, run_after=at + WATCH_MARGIN)


def _invite(scheduler: Scheduler, job_id: uuid.UUID) -> None:
    """More than this chunk is left: queue a task that an idle worker picks up to join in (it
    invites the next one the same way). At most one such task per job waits at a time."""
    if claims.has_claimable(job_id) and not scheduler.has_waiting(job_id, due_now=True):
        scheduler.invite(job_id)


def _ingest_chunks(job_id: uuid.UUID, chunk: list[ImportItem], owner: str, deadline: float,
                   scheduler: Scheduler) -> None:
    """Feed the chunk, and the further chunks of its kind claimed as the pipeline asks for more
    (until ``deadline``), through one pipeline run, so it never drains between chunks."""
    job = ImportJob.objects.get(pk=job_id)
    kind = chunk[0].kind
    claimed: list[int] = []

    def items() -> Iterator[IngestItem]:
        cursors: dict[int, _ArchiveCursor] = {}
        current = chunk
        try:
            while True:
                claimed.extend(item.pk for item in current)
                yield from _ingest_items(current, cursors)
                if time.monotonic() >= deadline:
                    return
                more = claims.claim_chunk(job_id, owner, size=settings.IMPORT_CHUNK_SIZE, kind=kind)
                if more.outcome is not claims.Claim.CLAIMED:
                    return
                _invite(scheduler, job_id)
                current = more.items
        finally:
            for cursor in cursors.values():
                cursor.close()

    record = _Recorder(job_id, owner)
    ingest_items(items(), options=IngestOptions(source=_SOURCE_FOR[kind], city=job.city, group_key=job.group_key,
                                                added_by_id=job.created_by_id),
                 on_outcome=record)
    if record.count != len(claimed):  # never left pending: chunks that keep coming back fail the job
        raise RuntimeError(f"import {job_id}: {len(claimed)} claimed item(s), {record.count} recorded")


def _ingest_items(chunk: list[ImportItem], cursors: dict[int, _ArchiveCursor]) -> Iterator[IngestItem]:
    first = chunk[0]
    if first.kind == ImportItem.Kind.UPLOAD:
        return (IngestItem(name=i.name, source_ref=i.name, read=partial(_read_payload, i.payload), key=i.pk,
                           metadata=metadata_from_json(i.metadata)) for i in chunk)
    if first.kind == ImportItem.Kind.URL:
        return (IngestItem(name=i.name, source_ref=i.url, read=partial(_fetch, i.url), key=i.pk,
                           metadata=metadata_from_json(i.metadata)) for i in chunk)
    if first.parent_id not in cursors:
        cursors[first.parent_id] = _ArchiveCursor(ImportItem.objects.get(pk=first.parent_id))
    return cursors[first.parent_id].members({item.member_index: item for item in chunk})


# --------------------------------------------------------------------------
# archives -> member items


def _expand_archive(job_id: uuid.UUID, archive: ImportItem, owner: str) -> None:
    """Give a claimed archive one item per member, all in one transaction; from its commit on,
    every worker can claim the members."""
    members, error = [], ""
    try:
        with default_storage.open(archive.payload, "rb") as fh:
            # Names and per-member errors only: the bytes are read again when ingested.
            for index, member in enumerate(iter_archive(fh, limits=archive_limits(), keep_data=False)):
                members.append(ImportItem(
                    job_id=job_id, kind=ImportItem.Kind.MEMBER, parent=archive, member_index=index,
                    name=member.name[:1024],
                    state=ImportItem.State.FAILED if member.error else ImportItem.State.PENDING,
                    error=member.error or ""))
    except ArchiveRejected as rejected:
        members, error = [], str(rejected)
    except OSError as oserror:
        members, error = [], f"cannot read the uploaded archive: {oserror.strerror or oserror}"
    extra: list[ImportItem] = []
    if members and not error:
        members, extra, error = _apply_archive_manifest(job_id, archive, members)
    if not members and not extra and not error:
        error = "the archive holds no files"
    with transaction.atomic():
        if not ImportItem.objects.select_for_update().filter(
                pk=archive.pk, claimed_by=owner, state=ImportItem.State.PENDING).exists():
            raise claims.ClaimLost(f"import {job_id}: archive {archive.pk} was taken over")
        if error:
            archive.state, archive.error = ImportItem.State.FAILED, error
            archive.save(update_fields=["state", "error", "updated_at"])
            ImportJob.objects.filter(pk=job_id).update(failed=F("failed") + 1)
        else:
            ImportItem.objects.bulk_create(members + extra, batch_size=1000)
            archive.state = ImportItem.State.EXPANDED
            archive.save(update_fields=["state", "updated_at"])
            failed = sum(1 for m in members + extra if m.state == ImportItem.State.FAILED)
            ImportJob.objects.filter(pk=job_id).update(total=F("total") + len(members) + len(extra) - 1,
                                                       failed=F("failed") + failed)


def _apply_archive_manifest(job_id: uuid.UUID, archive: ImportItem,
                            members: list[ImportItem]) -> tuple[list[ImportItem], list[ImportItem], str]:
    """An archive with ``manifest.csv`` or ``manifest.jsonl`` at its root: the members its rows
    name (``member`` or ``path``) carry their row's metadata, its ``url`` rows become URL items,
    its bad rows failed items ("line 7: ..."); the manifest itself is not an image. Members it
    does not name are imported with the job's metadata. Returns (members, extra items, error)."""
    manifest = next((m for name in manifests.ARCHIVE_MANIFEST_NAMES for m in members
                     if m.name == name and m.state == ImportItem.State.PENDING), None)
    if manifest is None:
        return members, [], ""
    members = [m for m in members if m is not manifest]
    by_name = {m.name: m for m in members}
    named: dict[str, int] = {}  # member name -> line naming it
    extra: list[ImportItem] = []

    def failed(line: int, reason: str) -> None:
        extra.append(ImportItem(job_id=job_id, kind=ImportItem.Kind.MEMBER, parent=archive,
                                name=f"{manifest.name}:{line}", state=ImportItem.State.FAILED,
                                error=str(manifests.RowError(line, reason))))

    limits = manifests.ManifestLimits.from_settings(max_rows=settings.ARCHIVE_MAX_MEMBERS)
    try:
        with default_storage.open(archive.payload, "rb") as fh, \
                closing(iter_archive(fh, limits=archive_limits())) as pass_:
            for member in pass_:
                if member.name != manifest.name:
                    continue
                stream = member.open()
                if stream is None:
                    return members, [], f"{manifest.name}: {member.error or 'unreadable'}"
                for row in manifests.opened_rows(stream, name=manifest.name, limits=limits):
                    if isinstance(row, manifests.RowError):
                        failed(row.line, row.reason)
                    elif row.source == "url":
                        extra.append(ImportItem(job_id=job_id, kind=ImportItem.Kind.URL, name=row.name[:1024],
                                                url=row.target, metadata=manifests.metadata_json(row.metadata)))
                    elif row.target in named:
                        failed(row.line, _("\"%(name)s\" is named on line %(first)d already")
                               % {"name": row.target, "first": named[row.target]})
                    elif row.target not in by_name or by_name[row.target].state != ImportItem.State.PENDING:
                        failed(row.line, _("no image \"%(name)s\" in the archive") % {"name": row.target})
                    else:
                        named[row.target] = row.line
                        by_name[row.target].metadata = manifests.metadata_json(row.metadata)
                break
    except manifests.ManifestRejected as rejected:
        return members, [], f"{manifest.name}: {rejected}"
    except ArchiveRejected as rejected:
        return members, [], str(rejected)
    except OSError as error:
        return members, [], f"cannot read the uploaded archive: {error.strerror or error}"
    return members, extra, ""


# --------------------------------------------------------------------------
# claimed items -> pipeline


class _Recorder:
    """The pipeline's ``on_outcome``: writes the outcome on its item and the job's counts, only
    while we hold the item's claim. For an added image it runs inside the transaction that stores it."""

    def __init__(self, job_id: uuid.UUID, owner: str):
        self.job_id, self.owner = job_id, owner
        self.count = 0
        self._counting = threading.Lock()  # outcomes come from the store lanes' threads too

    def __call__(self, outcome: ItemOutcome) -> None:
        counter = _COUNTER_FOR[outcome.status]
        with transaction.atomic(savepoint=False):
            # The item first, the job row last: the job row stays locked for the shortest time.
            updated = ImportItem.objects.filter(
                pk=outcome.key, state=ImportItem.State.PENDING, claimed_by=self.owner).update(
                state=_STATE_FOR[outcome.status], image_id=outcome.image_id,
                error=(outcome.reason or "failed")[:2000] if outcome.status == ItemOutcome.FAILED else "",
                updated_at=timezone.now())
            if not updated:
                raise claims.ClaimLost(f"import {self.job_id}: item {outcome.key} is no longer ours")
            ImportJob.objects.filter(pk=self.job_id).update(**{counter: F(counter) + 1})
        with self._counting:
            self.count += 1


class _ArchiveCursor:
    """One pass over an expanded archive, shared by the chunks of its members that a worker
    claims in turn: they come in member order, so each chunk reads on from where the last one
    stopped rather than from the start (a pass reads every member through, for the limits).
    The archive is the same bytes as when it was expanded, so member positions are stable."""

    def __init__(self, archive: ImportItem):
        self.archive = archive
        self._file = self._pass = self._members = None
        self._next = 0  # position of the next member the pass yields

    def members(self, pending: dict[int, ImportItem]) -> Iterator[IngestItem]:
        problem = ""
        try:
            if self._members is None or min(pending) < self._next:
                self.close()
                self._file = default_storage.open(self.archive.payload, "rb")
                self._pass = iter_archive(self._file, limits=archive_limits())
                self._members = enumerate(self._pass)
            while pending:
                index, member = next(self._members)
                self._next = index + 1
                item = pending.pop(index, None)
                if item is not None:
                    yield _member_item(self.archive, item, member, member.error)
        except StopIteration:
            self.close()
        except ArchiveRejected as rejected:
            problem = str(rejected)
            self.close()
        except OSError as error:
            problem = f"cannot read the uploaded archive: {error.strerror or error}"
            self.close()
        for item in pending.values():  # what a changed or unreadable archive no longer yields
            yield _member_item(self.archive, item, None, problem or "no longer in the archive")

    def close(self) -> None:
        if self._pass is not None:
            self._pass.close()
        if self._file is not None:
            self._file.close()
        self._file = self._pass = self._members = None
        self._next = 0


def _member_item(archive: ImportItem, item: ImportItem, member, error: str | None) -> IngestItem:
    return IngestItem(name=item.name, source_ref=f"{archive.name}:{item.name}",
                      read=partial(_member_bytes, member, error), key=item.pk,
                      metadata=metadata_from_json(item.metadata))


def _member_bytes(member, error: str | None):
    # The member waits in its spool, not in memory; the pipeline reads it from there in chunks.
    stream = member.open() if member is not None and error is None else None
    if stream is None:
        raise ItemRejected(error or "unreadable archive member")
    return stream


def _read_payload(name: str):
    return default_storage.open(name, "rb")  # read in chunks and closed by the pipeline


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
