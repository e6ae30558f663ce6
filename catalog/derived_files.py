"""Stored files that follow the rows and the settings: thumbnails regenerated at the configured size,
files no row references swept away (``manage.py regenerate_thumbnails`` / ``sweep_orphans``), and a
deleted image's files removed with it.

Both go through the storage API (local folder or S3), hold one picture or one page of names at a
time, and are resumable: each step leaves the store consistent, so a killed run is simply run again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from catalog.models import DeletedContent, Image, Video, files_in_use

logger = logging.getLogger(__name__)

SWEPT_FOLDERS = ("images", "thumbnails", "videos")
_PAGE = 500
_CONTENT_NAME = re.compile(r"^([0-9a-f]{64})[.-]")


# --- thumbnails -----------------------------------------------------------------------------------


def thumbnail_size(width: int, height: int, *, max_side: int) -> tuple[int, int]:
    """The size catalog.imaging.make_thumbnail gives a ``width`` x ``height`` picture."""
    scale = max_side / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumbnail_name(sha256: str, *, max_side: int) -> str:
    """A regenerated thumbnail's name: the size is part of it, so the new file is written beside the
    old one (no moment without a thumbnail) and browsers do not keep showing a cached old size."""
    return f"thumbnails/{sha256[:2]}/{sha256}-{max_side}.jpg"


def thumbnail_is_current(name: str, *, width: int, height: int, max_side: int) -> bool:
    """Whether the stored thumbnail ``name`` has the size ``max_side`` gives (read from its header;
    the short side may differ by one pixel, from rounding after a draft-mode decode)."""
    from PIL import Image as PILImage

    if not name:
        return False
    expected = thumbnail_size(width, height, max_side=max_side)
    try:
        with default_storage.open(name, "rb") as handle, PILImage.open(handle) as picture:
            actual = picture.size
    except Exception:  # missing, unreadable or not an image: make it again
        return False
    long_axis = 0 if expected[0] >= expected[1] else 1
    return actual[long_axis] == expected[long_axis] and abs(actual[1 - long_axis] - expected[1 - long_axis]) <= 1


@dataclass
class ThumbnailReport:
    checked: int = 0
    regenerated: int = 0
    failed: int = 0


def regenerate_thumbnails(*, max_side: int | None = None, on_progress: Callable[[int], None] | None = None,
                          on_failure: Callable[[str], None] | None = None) -> ThumbnailReport:
    """Make again, from the original, every thumbnail whose size is not what ``max_side`` (default
    IMAGESEARCH_THUMBNAIL_SIZE) gives. Each new thumbnail is written under a new name, then the row
    is pointed at it, then the old file is removed: a kill at any point leaves a row naming a
    complete file (at worst an unreferenced one, which ``sweep_orphans`` removes)."""
    from catalog.imaging import ImageRejected, decode_image, make_thumbnail

    max_side = max_side or settings.THUMBNAIL_MAX_SIDE
    report = ThumbnailReport()
    last = 0
    while True:
        page = list(Image.objects.filter(pk__gt=last).order_by("pk")
                    .values_list("pk", "sha256", "file", "thumbnail", "width", "height", "original_name")[:_PAGE])
        if not page:
            return report
        last = page[-1][0]
        for pk, sha256, file, thumbnail, width, height, original_name in page:
            report.checked += 1
            if thumbnail_is_current(thumbnail, width=width, height=height, max_side=max_side):
                continue
            try:
                with default_storage.open(file, "rb") as handle:  # streamed: JPEGs decode reduced (draft)
                    decoded = decode_image(handle, max_pixels=settings.IMAGE_MAX_PIXELS, min_side=max_side)
                new_name = thumbnail_name(sha256, max_side=max_side)
                _replace(new_name, make_thumbnail(decoded.image, max_side=max_side))
                del decoded
            except (ImageRejected, OSError) as error:
                report.failed += 1
                if on_failure is not None:
                    on_failure(f"image {pk} ({original_name or file}): {error}")
                continue
            if not Image.objects.filter(pk=pk, thumbnail=thumbnail).update(thumbnail=new_name):
                if new_name != thumbnail:  # deleted or changed meanwhile: the new file is nobody's
                    default_storage.delete(new_name)
                continue
            if thumbnail and thumbnail != new_name and not Image.objects.filter(thumbnail=thumbnail).exists():
                default_storage.delete(thumbnail)
            report.regenerated += 1
        if on_progress is not None:
            on_progress(len(page))


def _replace(name: str, data: bytes) -> None:
    if default_storage.exists(name):  # left by a killed run, or a broken file being redone
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:  # a storage that renames on collision would break the naming
        raise OSError(f"storage saved {name!r} as {saved!r}")


# --- deleting images -------------------------------------------------------------------------------


def delete_images(images) -> int:
    """Delete the ``images`` (a queryset: rows, vectors) and, once that has committed, their files
    that no other row names; returns how many images were deleted. Files go after the commit and
    under the pipeline's per-content lock (an import of the same bytes may be reusing them): a
    crash in between leaves only unreferenced files, which ``sweep_orphans`` removes.

    The deleted bytes are remembered (DeletedContent) in the same transaction, so a watched folder
    that still holds the file does not bring it back: a picture's hash, and a video's once its last
    frame is gone (its frames' own keys are never a file's hash)."""
    rows = list(images.values_list("pk", "sha256", "file", "thumbnail", "video_id", "original_name"))
    # A video goes with its last frame (a trigger): its file then too, unless frames are left.
    videos = list(Video.objects.filter(frames__pk__in=[pk for pk, *_ in rows]).distinct()
                  .values_list("sha256", "file", "original_name"))
    with transaction.atomic():
        Image.objects.filter(pk__in=[pk for pk, *_ in rows]).delete()
        gone = {sha256 for sha256, *_ in videos} - set(
            Video.objects.filter(sha256__in=[sha256 for sha256, *_ in videos]).values_list("sha256", flat=True))
        _remember_deleted([(sha256, name) for _, sha256, _, _, video, name in rows if video is None]
                          + [(sha256, name) for sha256, _, name in videos if sha256 in gone])
        transaction.on_commit(lambda: _remove_files([(sha256, [file, thumb]) for _, sha256, file, thumb, *_ in rows]
                                                    + [(sha256, [file]) for sha256, file, _ in videos]))
    return len(rows)


def _remember_deleted(contents: list[tuple[str, str]]) -> None:
    """Tombstones for (sha256, original name); deleted again: its time moves on."""
    DeletedContent.objects.bulk_create(
        [DeletedContent(sha256=sha256, original_name=name[:255]) for sha256, name in contents], batch_size=_PAGE,
        update_conflicts=True, unique_fields=["sha256"], update_fields=["deleted_at", "original_name"])


def _remove_files(owners: list[tuple[str, list[str]]]) -> None:
    from catalog.ingest.pipeline import content_locks  # the lock key must be the pipeline's own

    for sha256, names in owners:
        try:
            with content_locks([sha256]):
                names = [name for name in names if name]
                referenced = files_in_use(names)
                for name in names:
                    if name not in referenced:
                        default_storage.delete(name)  # a missing file is not an error (storage API)
        except Exception:  # best effort: the rows are gone; sweep_orphans removes what is left
            logger.warning("could not remove the files of a deleted image: %s", names, exc_info=True)


# --- orphan sweep ---------------------------------------------------------------------------------


@dataclass
class SweepReport:
    scanned: int = 0
    removed: int = 0
    young: int = 0  # unreferenced but within the grace period: kept
    failed: int = 0


def sweep_orphans(*, grace: timedelta, dry_run: bool = False,
                  on_removed: Callable[[str], None] | None = None,
                  on_failure: Callable[[str], None] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> SweepReport:
    """Remove the files under images/, thumbnails/ and videos/ that no image (or video) row
    references and that are older than ``grace``.

    An import writes a picture's files first and commits its row after them, so for a while every
    import in flight has files that no row references yet. The grace period is what keeps those:
    no import takes anywhere near it (24 h by default) between writing and committing. The one way an
    old file gets referenced again, an import of the same bytes reusing a file an interrupted import
    left, is closed by the pipeline's per-content lock: the sweep takes it too and checks again under
    it before removing, so it either sees the new row or removes the file before the import looks.
    Listing, checking and removing go page by page; a killed sweep is simply run again.
    """
    from catalog.ingest.pipeline import content_locks  # the lock key must be the pipeline's own

    report = SweepReport()
    cutoff = timezone.now() - grace
    for names in _stored_pages():
        report.scanned += len(names)
        referenced = files_in_use(names)
        for name in names:
            if name in referenced:
                continue
            try:
                if default_storage.get_modified_time(name) > cutoff:
                    report.young += 1
                    continue
                match = _CONTENT_NAME.match(name.rsplit("/", 1)[-1])
                with content_locks([match[1]] if match else []):
                    if files_in_use([name]):
                        continue
                    if not dry_run:
                        default_storage.delete(name)
            except (OSError, NotImplementedError) as error:
                report.failed += 1
                if on_failure is not None:
                    on_failure(f"{name}: {error}")
                continue
            report.removed += 1
            if on_removed is not None:
                on_removed(name)
        if on_progress is not None:
            on_progress(len(names))
    return report


def _stored_pages() -> Iterator[list[str]]:
    """Names of the stored files under the swept folders, a page at a time, folder by folder."""
    pending = list(SWEPT_FOLDERS)
    while pending:
        folder = pending.pop()
        try:
            folders, files = default_storage.listdir(folder)
        except FileNotFoundError:
            continue
        pending.extend(f"{folder}/{name}" for name in sorted(folders, reverse=True))
        files = sorted(files)
        for start in range(0, len(files), _PAGE):
            yield [f"{folder}/{name}" for name in files[start:start + _PAGE]]
