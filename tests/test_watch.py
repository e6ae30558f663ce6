"""Watched folders (manage.py watch): files are imported once they settle, once, across restarts;
a bad file is one line; SIGTERM stops the command cleanly. The watcher's scans run on a clock the
test moves, except in the SIGTERM test, which runs the real command."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from catalog.ingest.pipeline import IngestOptions
from catalog.ingest.watch import FolderWatcher
from catalog.models import Image
from tests.conftest import varied_picture

REPO = Path(__file__).resolve().parent.parent
SETTLE = 2.0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_watcher(folder: Path, lines: list[str], clock: Clock, **options) -> FolderWatcher:
    return FolderWatcher(folder, options=IngestOptions(source=Image.Source.FOLDER, **options), settle=SETTLE,
                         on_line=lines.append, clock=clock)


@pytest.fixture
def inbox(tmp_path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.mark.django_db
def test_a_new_file_is_imported_once_after_it_settles_with_the_folders_metadata(inbox):
    lines, clock = [], Clock()
    watcher = make_watcher(inbox, lines, clock, city="Lyon", group_key="G1")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "a.png").write_bytes(varied_picture(1))
    (inbox / ".a.png.part").write_bytes(varied_picture(2))  # a sync tool's partial file: hidden
    (inbox / "notes.txt").write_text("not a picture")

    assert watcher.scan().waiting == 1 and not Image.objects.exists()  # seen, not settled yet
    clock.now += SETTLE
    report = watcher.scan()
    assert [o.status for o in report.outcomes] == ["added"]
    image = Image.objects.get()
    assert (image.original_name, image.city, image.group_key, image.source) == (
        str(Path("sub", "a.png")), "Lyon", "G1", Image.Source.FOLDER)
    clock.now += SETTLE
    assert watcher.scan().outcomes == [] and Image.objects.count() == 1
    assert lines == [f"added {inbox / 'sub' / 'a.png'}"]


@pytest.mark.django_db
def test_a_file_written_slowly_in_pieces_is_imported_only_when_complete(inbox):
    lines, clock = [], Clock()
    watcher = make_watcher(inbox, lines, clock)
    data = varied_picture(3, size=(200, 150))
    target = inbox / "slow.png"
    pieces = [data[i:i + len(data) // 4] for i in range(0, len(data), len(data) // 4)]
    for piece in pieces:
        with target.open("ab") as handle:
            handle.write(piece)
        watcher.scan()
        clock.now += SETTLE * 0.75  # each piece lands before the one before it has settled
    assert not Image.objects.exists() and not lines
    clock.now += SETTLE
    watcher.scan()
    assert Image.objects.get().sha256 == hashlib.sha256(data).hexdigest()
    assert lines == [f"added {target}"]


@pytest.mark.django_db
def test_a_restarted_watcher_catches_up_without_reading_what_it_imported_before(inbox):
    lines, clock = [], Clock()
    first = make_watcher(inbox, lines, clock)
    for index in range(2):
        (inbox / f"old{index}.png").write_bytes(varied_picture(10 + index))
    first.scan()
    clock.now += SETTLE
    first.scan()
    assert Image.objects.count() == 2
    (inbox / "while-down.png").write_bytes(varied_picture(12))  # appears while no watcher runs

    lines.clear()
    second = make_watcher(inbox, lines, clock)
    second.scan()
    clock.now += SETTLE
    report = second.scan()
    assert report.known == 2  # not read, not hashed: their rows name them and they have not changed
    assert lines == [f"added {inbox / 'while-down.png'}"] and Image.objects.count() == 3

    # The same bytes under a new name are read, and skipped by their hash.
    (inbox / "copy.png").write_bytes(varied_picture(10))
    second.scan()
    clock.now += SETTLE
    second.scan()
    assert lines[-1] == f"skipped {inbox / 'copy.png'}: already stored" and Image.objects.count() == 3


@pytest.mark.django_db
def test_a_file_name_that_is_not_utf8_is_imported_and_known_after_a_restart(inbox):
    lines, clock = [], Clock()
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: a surrogate escape in Python, not sendable as text
    Path(inbox, odd).write_bytes(varied_picture(20))
    (inbox / "ok.png").write_bytes(varied_picture(21))
    for watcher in (make_watcher(inbox, lines, clock), make_watcher(inbox, lines, clock)):  # then a restart
        watcher.scan()
        clock.now += SETTLE
        report = watcher.scan()
    assert Image.objects.count() == 2 and report.known == 2


@pytest.mark.django_db
def test_a_bad_file_is_one_line_and_the_watcher_goes_on(inbox):
    lines, clock = [], Clock()
    watcher = make_watcher(inbox, lines, clock)
    (inbox / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (inbox / "good.png").write_bytes(varied_picture(20))
    watcher.scan()
    clock.now += SETTLE
    watcher.scan()
    for _ in range(2):  # not tried again while unchanged
        clock.now += SETTLE
        watcher.scan()
    assert [line.split(" ", 1)[0] for line in lines] == ["FAILED", "added"]
    assert lines[0].startswith(f"FAILED {inbox / 'broken.jpg'}: ")
    assert Image.objects.count() == 1

    (inbox / "later.png").write_bytes(varied_picture(21))
    watcher.scan()
    clock.now += SETTLE
    watcher.scan()
    assert lines[-1] == f"added {inbox / 'later.png'}" and Image.objects.count() == 2


@pytest.mark.django_db
def test_a_watched_folder_holding_the_media_folder_does_not_import_the_stored_files(tmp_path, media_root):
    assert media_root.parent == tmp_path  # tests/conftest.py: each test's media folder is in tmp_path
    lines, clock = [], Clock()
    watcher = make_watcher(tmp_path, lines, clock)
    (tmp_path / "new.png").write_bytes(varied_picture(25))
    for _ in range(3):
        watcher.scan()
        clock.now += SETTLE
    assert any(media_root.rglob("*.png")) and lines == [f"added {tmp_path / 'new.png'}"]


def test_the_watch_command_refuses_a_missing_folder_and_bad_timings(tmp_path):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="is not a folder"):
        call_command("watch", str(tmp_path / "missing"))
    with pytest.raises(CommandError, match="--interval"):
        call_command("watch", str(tmp_path), "--interval", "0")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_watch_command_imports_a_file_and_exits_cleanly_on_sigterm(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    (tmp_path / "watch_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        f"DATABASES['default']['NAME'] = {connection.settings_dict['NAME']!r}\n"
        f"MEDIA_ROOT = {str(tmp_path / 'media')!r}\n")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="watch_settings", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "watch.log"
    with log.open("wb") as out:
        watcher = subprocess.Popen([sys.executable, "manage.py", "watch", str(folder), "--settle", "0.5",
                                    "--interval", "0.2"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "Watching" not in log.read_text() and watcher.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            (folder / "dropped.png").write_bytes(varied_picture(30))
            while not Image.objects.exists() and watcher.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert Image.objects.count() == 1, log.read_text()[-3000:]
            watcher.send_signal(signal.SIGTERM)
            assert watcher.wait(timeout=30) == 0, log.read_text()[-3000:]
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
    assert log.read_text().splitlines()[-2:] == [f"added {folder / 'dropped.png'}", "Stopped."]


# --- pictures and videos deleted in the app ---------------------------------------------------------


def settle_and_scan(watcher: FolderWatcher, clock: Clock):
    watcher.scan()
    clock.now += SETTLE
    return watcher.scan()


@pytest.mark.django_db
def test_a_picture_deleted_in_the_app_is_not_brought_back_by_a_restarted_watcher(inbox):
    from catalog.derived_files import delete_images
    from catalog.models import DeletedContent

    lines, clock = [], Clock()
    (inbox / "keep.png").write_bytes(varied_picture(40))
    (inbox / "gone.png").write_bytes(varied_picture(41))
    settle_and_scan(make_watcher(inbox, lines, clock), clock)
    assert Image.objects.count() == 2
    delete_images(Image.objects.filter(original_name="gone.png"))  # as the admin deletes it; the file stays
    assert list(DeletedContent.objects.values_list("sha256", "original_name")) == [
        (hashlib.sha256(varied_picture(41)).hexdigest(), "gone.png")]

    lines.clear()
    restarted = make_watcher(inbox, lines, clock)
    report = settle_and_scan(restarted, clock)
    assert report.known == 1 and [o.status for o in report.outcomes] == ["deleted"]
    assert lines == [f"skipped {inbox / 'gone.png'}: deleted in the app (watch --include-deleted imports it again)"]
    for _ in range(2):  # one line per file, not one per scan
        clock.now += SETTLE
        restarted.scan()
    assert len(lines) == 1 and list(Image.objects.values_list("original_name", flat=True)) == ["keep.png"]

    # The same bytes under another name are the same deleted picture.
    (inbox / "copy-of-gone.png").write_bytes(varied_picture(41))
    settle_and_scan(restarted, clock)
    assert lines[-1].startswith(f"skipped {inbox / 'copy-of-gone.png'}: deleted in the app")
    assert Image.objects.count() == 1


@pytest.mark.django_db
def test_an_upload_of_deleted_bytes_is_a_deliberate_re_add_and_clears_the_tombstone(inbox):
    from catalog.derived_files import delete_images
    from catalog.models import DeletedContent
    from tests.conftest import ingest_pictures

    lines, clock = [], Clock()
    (inbox / "a.png").write_bytes(varied_picture(42))
    settle_and_scan(make_watcher(inbox, lines, clock), clock)
    delete_images(Image.objects.all())
    assert DeletedContent.objects.count() == 1

    [image] = ingest_pictures([("uploaded.png", varied_picture(42))])  # the upload path: not the watcher's
    assert image.source == Image.Source.UPLOAD and not DeletedContent.objects.exists()
    lines.clear()
    settle_and_scan(make_watcher(inbox, lines, clock), clock)  # a restart: the file is a duplicate again
    assert lines == [f"skipped {inbox / 'a.png'}: already stored"] and Image.objects.count() == 1


@pytest.mark.django_db
def test_the_import_command_re_adds_deleted_bytes(tmp_path):
    from catalog.derived_files import delete_images
    from catalog.models import DeletedContent
    from tests.conftest import import_folder

    (tmp_path / "a.png").write_bytes(varied_picture(43))
    assert import_folder(tmp_path)[2] is None
    delete_images(Image.objects.all())
    assert DeletedContent.objects.exists() and not Image.objects.exists()
    out, err, error = import_folder(tmp_path)
    assert error is None and Image.objects.count() == 1 and not DeletedContent.objects.exists(), (out, err)


@pytest.mark.django_db
def test_include_deleted_imports_deleted_pictures_again(inbox):
    from catalog.derived_files import delete_images
    from catalog.models import DeletedContent

    lines, clock = [], Clock()
    (inbox / "a.png").write_bytes(varied_picture(44))
    settle_and_scan(make_watcher(inbox, lines, clock), clock)
    delete_images(Image.objects.all())

    lines.clear()
    watcher = FolderWatcher(inbox, options=IngestOptions(source=Image.Source.FOLDER), settle=SETTLE,
                            include_deleted=True, on_line=lines.append, clock=clock)
    settle_and_scan(watcher, clock)
    assert lines == [f"added {inbox / 'a.png'}"] and Image.objects.count() == 1
    assert not DeletedContent.objects.exists()  # stored again: nothing to skip at the next plain start


@pytest.mark.django_db
def test_a_delete_that_does_not_commit_leaves_no_tombstone(monkeypatch):
    from catalog import derived_files
    from catalog.models import DeletedContent
    from tests.conftest import ingest_pictures

    ingest_pictures([("a.png", varied_picture(45))])

    def crash(callback):  # the last step inside the delete's transaction
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(derived_files.transaction, "on_commit", crash)
    with pytest.raises(RuntimeError, match="killed before the commit"):
        derived_files.delete_images(Image.objects.all())
    assert Image.objects.count() == 1 and not DeletedContent.objects.exists()


@pytest.mark.django_db
def test_tombstones_are_unique_per_content_and_a_second_delete_moves_its_time():
    from django.db import IntegrityError, transaction

    from catalog.derived_files import _remember_deleted
    from catalog.models import DeletedContent

    sha = hashlib.sha256(b"x").hexdigest()
    _remember_deleted([(sha, "first.png")])
    first = DeletedContent.objects.get()
    _remember_deleted([(sha, "second.png")])
    again = DeletedContent.objects.get()
    assert (again.original_name, again.deleted_at >= first.deleted_at) == ("second.png", True)
    for bad in (sha, "not-a-hash"):  # the database refuses a second row, and anything but a hash
        with pytest.raises(IntegrityError), transaction.atomic():
            DeletedContent.objects.create(sha256=bad)


@pytest.mark.django_db
def test_the_watch_command_honours_deletions_unless_include_deleted(tmp_path, monkeypatch):
    from django.core.management import call_command

    seen = []
    monkeypatch.setattr(FolderWatcher, "run", lambda self, **kwargs: seen.append(self.options.skip_deleted))
    call_command("watch", str(tmp_path), stdout=io.StringIO())
    call_command("watch", str(tmp_path), "--include-deleted", stdout=io.StringIO())
    assert seen == [True, False]


@pytest.mark.django_db
def test_sample_photos_deleted_in_the_app_are_not_loaded_again_at_the_next_start(tmp_path, monkeypatch):
    from django.core.management import call_command

    from catalog.derived_files import delete_images
    from catalog.management.commands import load_sample_images

    samples = [tmp_path / "astronaut.png", tmp_path / "coffee.png"]
    for index, path in enumerate(samples):
        path.write_bytes(varied_picture(50 + index))
    monkeypatch.setattr(load_sample_images, "sample_photo_paths", lambda: samples)
    call_command("load_sample_images", "--no-progress", stdout=io.StringIO())
    delete_images(Image.objects.filter(original_name="coffee.png"))
    out = io.StringIO()
    call_command("load_sample_images", "--no-progress", stdout=out)  # bin/serve runs it at every start
    assert "skipped 1 duplicate(s) and 1 deleted in the app" in out.getvalue()
    assert list(Image.objects.values_list("original_name", flat=True)) == ["astronaut.png"]
