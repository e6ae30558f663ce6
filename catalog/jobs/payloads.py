"""Uploaded import payloads (``imports/<job id>/``): kept while a job runs, deleted when it
finishes or fails; folders left by dead requests or cut-short deletions are pruned."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.core.files.storage import default_storage
from django.utils import timezone

from catalog.models import ImportJob

logger = logging.getLogger(__name__)

# Payload folders without a job row are left by requests that died mid-upload; one that young
# may belong to a request still running.
ORPHAN_PAYLOAD_AGE = timedelta(days=1)


def prune_payloads() -> int:
    """Delete payload folders of finished jobs and old folders that have no job. Returns how many."""
    try:
        folders, _ = default_storage.listdir("imports")
    except FileNotFoundError:
        return 0
    by_id = {}
    for folder in folders:
        try:
            by_id[uuid.UUID(folder)] = folder
        except ValueError:
            continue
    states = dict(ImportJob.objects.filter(pk__in=list(by_id)).values_list("pk", "state"))
    pruned = 0
    for job_id, folder in by_id.items():
        state = states.get(job_id)
        if state is not None and state not in (ImportJob.State.DONE, ImportJob.State.FAILED):  # still running
            continue
        if state is None and not _older_than(f"imports/{folder}", ORPHAN_PAYLOAD_AGE):
            continue
        delete_payloads(f"imports/{folder}")
        pruned += 1
    return pruned


def delete_payloads(folder: str) -> None:
    """Delete a job's payload folder (best effort: a leftover is pruned later)."""
    try:
        folders, files = default_storage.listdir(folder)
        for sub in folders:
            delete_payloads(f"{folder}/{sub}")
        for name in files:
            default_storage.delete(f"{folder}/{name}")
        default_storage.delete(folder)  # FileSystemStorage removes the empty folder; buckets have none
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning("could not delete import payloads in %s: %s", folder, error)


def _older_than(name: str, age: timedelta) -> bool:
    try:
        _, files = default_storage.listdir(name)
        times = [default_storage.get_modified_time(f"{name}/{f}") for f in files]
    except (NotImplementedError, OSError):
        return True
    return not times or max(times) < timezone.now() - age
