"""Import jobs, the request side: turn uploaded files and URLs into a durable job; retry a failed
one; find and re-queue jobs that lost their task.

The uploaded bytes are written to storage (``imports/<job id>/``) and the job and its items
committed before the job's task is queued (on commit): a web process that dies mid-request
leaves no job behind, and a queued job never lacks its bytes. The work itself is done by
``catalog.jobs.worker`` in the background workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from functools import partial
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import get_valid_filename
from django.utils.translation import gettext as _

from catalog.ingest import manifests
from catalog.ingest.archives import is_archive
from catalog.ingest.remote import name_from_url
from catalog.jobs import tasks
from catalog.jobs.payloads import delete_payloads
from catalog.models import ImportItem, ImportJob

MAX_URL_LENGTH = 2048
MAX_ERRORS_SHOWN = 1000  # per-item errors returned with a job; the counts stay exact
_SNIFF_BYTES = 512


class ImportRequestError(ValueError):
    """The import request itself is unusable; ``str(exc)`` says why."""


def validate_url(url: str) -> str:
    """Return ``url`` stripped, or raise ImportRequestError. Only the form is checked here; where it
    points (private addresses, redirects, content) is checked when the worker fetches it."""
    url = (url or "").strip()
    if not url:
        raise ImportRequestError(_("Enter a URL."))
    if len(url) > MAX_URL_LENGTH:
        raise ImportRequestError(_("URL is longer than %(limit)d characters.") % {"limit": MAX_URL_LENGTH})
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ImportRequestError(_("Not a valid URL: %(url)s") % {"url": url[:200]}) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ImportRequestError(_("Only http and https URLs can be imported: %(url)s") % {"url": url[:200]})
    if not parts.hostname:
        raise ImportRequestError(_("URL has no host: %(url)s") % {"url": url[:200]})
    if parts.username is not None or parts.password is not None:
        raise ImportRequestError(_("URLs with user names or passwords are not allowed."))
    return url


def check_url_count(urls: Sequence[str]) -> Sequence[str]:
    if len(urls) > settings.IMPORT_MAX_URLS:
        raise ImportRequestError(_("At most %(limit)d URLs per import.") % {"limit": settings.IMPORT_MAX_URLS})
    return urls


def validate_urls(urls: Sequence[str]) -> list[str]:
    return [validate_url(url) for url in check_url_count(urls)]


def validate_upload(file: UploadedFile) -> UploadedFile:
    if file.size is not None and file.size > settings.IMPORT_MAX_UPLOAD_BYTES:
        raise ImportRequestError(_("%(name)s is larger than %(limit)d bytes.")
                                 % {"name": file.name, "limit": settings.IMPORT_MAX_UPLOAD_BYTES})
    return file


def create_job(*, files: Iterable[UploadedFile] = (), urls: Iterable[str] = (), city: str = "",
               group_key: str = "", via: str, created_by=None, manifest: UploadedFile | None = None) -> ImportJob:
    """Store the uploads, create the job and its items, and queue the job once committed.

    Each file becomes one item: an image, or an archive the worker expands into its members (an
    archive with a manifest at its root gives its members that manifest's metadata). Each URL row
    of ``manifest`` becomes a URL item carrying the row's metadata; each bad row a failed item
    ("line 7: ..."). ``created_by`` (a user, or None for the command line) is recorded on the job
    and its images. Inputs are expected to be validated already (validate_urls / validate_upload)."""
    files, urls = list(files), list(urls)
    if not files and not urls and manifest is None:
        raise ImportRequestError(_("Nothing to import: upload a file or give a URL."))
    rows = _manifest_rows(manifest) if manifest is not None else iter(())
    job_id = uuid.uuid4()
    try:
        with transaction.atomic():
            job = ImportJob.objects.create(id=job_id, created_via=via, created_by=created_by,
                                           city=city.strip()[:120], group_key=group_key.strip()[:120],
                                           total=len(files) + len(urls))
            items = []
            for index, file in enumerate(files):
                name = _display_name(file.name or "upload")
                kind = ImportItem.Kind.ARCHIVE if is_archive(name, _head(file)) else ImportItem.Kind.UPLOAD
                payload = default_storage.save(f"{job.payload_folder}/{index:05d}-{_storage_name(name)}", file)
                items.append(ImportItem(job=job, kind=kind, name=name, payload=payload))
            items += [ImportItem(job=job, kind=ImportItem.Kind.URL, name=url_name(url), url=url) for url in urls]
            ImportItem.objects.bulk_create(items)
            count, failed = _add_manifest_items(job, rows)
            if count:
                ImportJob.objects.filter(pk=job.pk).update(total=F("total") + count, failed=failed)
                job.refresh_from_db(fields=["total", "failed"])
            transaction.on_commit(partial(tasks.enqueue_import, job.pk))
    except BaseException:
        # The rows are gone with the rollback; so must be their bytes: the whole folder, since a save
        # that failed part-way (disk full) leaves its partial file behind.
        delete_payloads(ImportJob(id=job_id).payload_folder)
        raise
    return job


def validate_manifest(manifest: UploadedFile) -> UploadedFile:
    """An uploaded manifest whose header (and first row) can be read; else ImportRequestError."""
    validate_upload(manifest)
    _manifest_rows(manifest)
    return manifest


def _manifest_rows(manifest: UploadedFile):
    try:
        # Its rows become items inside this request: as many as the URLs one request may give
        # (a larger manifest goes inside an archive, expanded by the workers, or to import_images).
        return manifests.opened_rows(manifest, name=manifest.name or "",
                                     limits=manifests.ManifestLimits.from_settings(max_rows=settings.IMPORT_MAX_URLS))
    except manifests.ManifestRejected as rejected:
        raise ImportRequestError(_("%(name)s: %(reason)s") % {"name": _display_name(manifest.name or "manifest"),
                                                              "reason": rejected}) from None


def _add_manifest_items(job: ImportJob, rows, *, batch: int = 1000) -> tuple[int, int]:
    """Items for an uploaded manifest's rows, written in batches (a manifest is read row by row):
    URL rows become URL items with their metadata; others fail with their line's reason. Returns
    (items, of which failed)."""
    count = failed = 0
    pending: list[ImportItem] = []
    for row in rows:
        if isinstance(row, manifests.RowError):
            reason = str(row)
        elif row.source != "url":
            reason = str(manifests.RowError(row.line, _("%(source)s rows need the manifest inside an archive "
                                                       "(or manage.py import_images --manifest)")
                                            % {"source": row.source}))
        else:
            reason = ""
        if reason:
            failed += 1
            pending.append(ImportItem(job=job, kind=ImportItem.Kind.URL, name=_("manifest line %(line)d")
                                      % {"line": row.line}, state=ImportItem.State.FAILED, error=reason))
        else:
            pending.append(ImportItem(job=job, kind=ImportItem.Kind.URL, name=row.name, url=row.target,
                                      metadata=manifests.metadata_json(row.metadata)))
        count += 1
        if len(pending) >= batch:
            ImportItem.objects.bulk_create(pending)
            pending = []
    ImportItem.objects.bulk_create(pending)
    return count, failed


PAYLOAD_GONE = "the uploaded file was deleted when the import failed; upload it again"


def retry_job(job_id: uuid.UUID) -> bool:
    """Queue a failed job again (e.g. after the model was configured); its pending URL items resume.
    A failed job's uploads were deleted when it failed, so its pending upload and archive items
    fail now, each with PAYLOAD_GONE."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().filter(pk=job_id, state=ImportJob.State.FAILED).first()
        if job is None:
            return False
        lost = _fail_items_without_payload(job)
        ImportJob.objects.filter(pk=job_id).update(
            state=ImportJob.State.QUEUED, error="", attempts=0, finished_at=None, failed=F("failed") + lost)
        transaction.on_commit(partial(tasks.enqueue_import, job_id))
    return True


def cancel_job(job_id: uuid.UUID) -> bool:
    """Stop an unfinished job: workers claim none of its items any more (claims.claim_chunk sees a
    finished job), a chunk already claimed ends on its own, pending items stay pending, and the
    uploads are deleted. Returns False if the job had finished already."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_finished:
            return False
        job.close(ImportJob.State.CANCELLED)
        transaction.on_commit(partial(delete_payloads, job.payload_folder))
    return True


def added_images(job: ImportJob, *, limit: int) -> list:
    """The first ``limit`` images the job added, for thumbnails on its page."""
    items = job.items.filter(state=ImportItem.State.ADDED, image__isnull=False).select_related("image")
    return [item.image for item in items.order_by("id")[:limit]]


def _fail_items_without_payload(job: ImportJob) -> int:
    """Mark pending items whose uploaded bytes are gone as failed; returns how many."""
    kinds = (ImportItem.Kind.UPLOAD, ImportItem.Kind.ARCHIVE)
    holders = job.items.filter(kind__in=kinds, state__in=(ImportItem.State.PENDING, ImportItem.State.EXPANDED))
    gone = [item for item in holders if not item.payload or not default_storage.exists(item.payload)]
    pending = [item.pk for item in gone if item.state == ImportItem.State.PENDING]
    members = job.items.pending().filter(parent__in=[item.pk for item in gone]).values_list("pk", flat=True)
    now = timezone.now()
    return ImportItem.objects.filter(pk__in=[*pending, *members], state=ImportItem.State.PENDING).update(
        state=ImportItem.State.FAILED, error=PAYLOAD_GONE, updated_at=now)


def resume_unfinished() -> list[uuid.UUID]:
    """Queue a task for every unfinished job that has none waiting (its web process died between
    commit and enqueue, or its task row was lost). Items still held by live workers are looked
    at again when their claims run out. Returns the ids queued."""
    queued = []
    for job_id in ImportJob.objects.unfinished().order_by("created_at").values_list("pk", flat=True):
        if not tasks.has_queued_import(job_id):
            tasks.enqueue_import(job_id)
            queued.append(job_id)
    return queued


def job_errors(job: ImportJob, limit: int = MAX_ERRORS_SHOWN) -> list[dict[str, str]]:
    """The first ``limit`` per-item errors of the job, oldest first."""
    return [{"item": item.name, "source": item.source_ref, "message": item.error}
            for item in job.items.errors().select_related("parent")[:limit]]


def url_name(url: str) -> str:
    """A file name for a URL's image: the last path segment, else the host."""
    return name_from_url(url, fallback=urlsplit(url).hostname or "download")


def _head(file: UploadedFile) -> bytes:
    file.seek(0)
    head = file.read(_SNIFF_BYTES)
    file.seek(0)
    return head


def _display_name(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in name if c.isprintable()).strip()
    return cleaned[:255] or "upload"


def _storage_name(name: str) -> str:
    try:
        return get_valid_filename(name)[-100:]
    except SuspiciousFileOperation:
        return "upload"
