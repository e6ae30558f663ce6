"""Derived files: thumbnails regenerated after a size change, unreferenced files swept after a grace period."""

import io
import os
import time

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image as PILImage

from catalog.derived_files import thumbnail_is_current, thumbnail_size
from catalog.models import Image
from tests.conftest import ingest_pictures, make_image_bytes, varied_picture

pytestmark = pytest.mark.django_db


def run(command, *args):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(command, "--no-progress", *args, stdout=out, stderr=err)
    except CommandError as error:
        return out.getvalue(), err.getvalue(), error
    return out.getvalue(), err.getvalue(), None


def stored_size(name):
    with default_storage.open(name, "rb") as handle, PILImage.open(handle) as picture:
        return picture.size


def test_thumbnail_size_matches_make_thumbnail():
    from catalog.imaging import make_thumbnail

    for size in [(64, 48), (48, 64), (1000, 3), (33, 33), (20, 10)]:
        made = PILImage.open(io.BytesIO(make_thumbnail(PILImage.new("RGB", size), max_side=32))).size
        assert thumbnail_size(*size, max_side=32) == made


def test_thumbnails_are_regenerated_after_a_size_change_and_a_rerun_does_nothing(settings):
    images = ingest_pictures([(f"t{i}.png", varied_picture(i, size=(64, 48))) for i in range(2)]
                             + [("tall.png", varied_picture(5, size=(30, 60))),
                                # JPEG: decoded reduced (draft), so rounding may differ by a pixel
                                ("wide.jpg", make_image_bytes(size=(1001, 333), pattern=7))])
    old_names = [image.thumbnail.name for image in images]
    assert stored_size(old_names[0]) == (64, 48)  # smaller than 320: kept at its own size

    settings.THUMBNAIL_MAX_SIDE = 32
    out, err, error = run("regenerate_thumbnails")
    assert error is None, err
    assert "Regenerated 4, already at 32 px 0, failed 0." in out
    for image, old in zip(images, old_names):
        image.refresh_from_db()
        assert image.thumbnail.name != old and not default_storage.exists(old)
        assert thumbnail_is_current(image.thumbnail.name, width=image.width, height=image.height, max_side=32)
    assert stored_size(images[0].thumbnail.name) == (32, 24) and stored_size(images[2].thumbnail.name) == (16, 32)
    assert stored_size(images[3].thumbnail.name) == (32, 11)

    again, _, error = run("regenerate_thumbnails")
    assert error is None and "Regenerated 0, already at 32 px 4, failed 0." in again
    assert [Image.objects.get(pk=image.pk).thumbnail.name for image in images] == [i.thumbnail.name for i in images]


def test_a_missing_thumbnail_is_made_and_a_missing_original_is_one_failure_line(settings):
    lost_thumb, lost_original = ingest_pictures([("a.png", varied_picture(1)), ("b.png", varied_picture(2))])
    default_storage.delete(lost_thumb.thumbnail.name)
    default_storage.delete(lost_original.file.name)
    default_storage.delete(lost_original.thumbnail.name)
    out, err, error = run("regenerate_thumbnails")  # the size did not change: only the broken ones
    assert error is not None and error.returncode == 1 and "1 thumbnail(s) could not be made" in str(error)
    assert f"image {lost_original.pk} (b.png): " in err and len(err.strip().splitlines()) == 1
    assert "Regenerated 1, already at 320 px 0, failed 1." in out
    lost_thumb.refresh_from_db()
    assert default_storage.exists(lost_thumb.thumbnail.name)


def age(name, hours):
    """Make the stored file ``name`` look ``hours`` old (local storage)."""
    then = time.time() - hours * 3600
    os.utime(default_storage.path(name), (then, then))


def test_sweep_removes_old_orphans_only_and_keeps_every_referenced_file(settings):
    (image,) = ingest_pictures([("kept.png", varied_picture(3))])
    for name in (image.file.name, image.thumbnail.name):
        age(name, 100)  # referenced files are kept however old
    old_orphan = default_storage.save(f"images/ab/{'ab' * 32}.png", ContentFile(b"left by a killed import"))
    old_thumb = default_storage.save(f"thumbnails/cd/{'cd' * 32}-64.jpg", ContentFile(b"x"))
    young_orphan = default_storage.save(f"images/ef/{'ef' * 32}.png", ContentFile(b"an import in flight"))
    elsewhere = default_storage.save("imports/upload.bin", ContentFile(b"a queued upload"))
    for name in (old_orphan, old_thumb, elsewhere):
        age(name, 30)
    age(young_orphan, 2)

    out, err, error = run("sweep_orphans", "--dry-run")
    assert error is None, err
    assert f"would remove {old_orphan}" in err and f"would remove {old_thumb}" in err
    assert "Scanned 5 file(s): would remove 2, kept 1" in out
    assert default_storage.exists(old_orphan) and default_storage.exists(old_thumb)

    out, err, error = run("sweep_orphans")
    assert error is None, err
    assert sorted(line for line in err.splitlines() if line.startswith("removed")) == [
        f"removed {old_orphan}", f"removed {old_thumb}"]
    assert not default_storage.exists(old_orphan) and not default_storage.exists(old_thumb)
    for name in (young_orphan, elsewhere, image.file.name, image.thumbnail.name):
        assert default_storage.exists(name)

    out, _, _ = run("sweep_orphans", "--grace", "1")  # a shorter grace period takes the young one too
    assert "removed 1," in out and not default_storage.exists(young_orphan)
    assert default_storage.exists(image.file.name) and default_storage.exists(image.thumbnail.name)


def test_sweep_refuses_a_negative_grace_period():
    with pytest.raises(CommandError, match="--grace"):
        call_command("sweep_orphans", "--grace", "-1", "--no-progress")


@pytest.mark.django_db(transaction=True)
def test_sweep_waits_for_an_import_holding_the_content_lock_and_keeps_the_file_it_committed(settings):
    """An import reusing a file left by an interrupted one commits its row under the per-content lock:
    the sweep waits for that lock, checks again, and keeps the file."""
    import threading
    from datetime import timedelta

    from django.db import connection

    from catalog.derived_files import sweep_orphans
    from catalog.ingest.pipeline import content_locks

    sha256 = "12" * 32
    name = default_storage.save(f"images/12/{sha256}.png", ContentFile(varied_picture(1)))
    age(name, 48)
    reports = []

    def sweep():
        try:
            reports.append(sweep_orphans(grace=timedelta(hours=1)))
        finally:
            from django.db import connection as thread_connection

            thread_connection.close()

    with content_locks([sha256]):  # held like an import storing these bytes
        worker = threading.Thread(target=sweep)
        worker.start()
        deadline = time.monotonic() + 30
        while True:  # until the sweep waits on the lock (or has wrongly finished)
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                waiting = cursor.fetchone()[0]
            if waiting or not worker.is_alive() or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        Image.objects.create(file=name, thumbnail="", sha256=sha256, width=64, height=48, source=Image.Source.UPLOAD)
    worker.join(30)
    assert waiting == 1 and not worker.is_alive()
    assert reports[0].removed == 0 and default_storage.exists(name)
