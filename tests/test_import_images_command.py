"""``manage.py import_images FOLDER``: the same pipeline, in-process (no worker needed)."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage

from catalog.models import Embedding, Image
from tests.conftest import import_folder

pytestmark = pytest.mark.django_db


def picture(index: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (30, 20), ((index * 61) % 256, 40, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_summary_failed_lines_and_exit_status(tmp_path, media_root):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for index in range(3):
        (folder / f"{index}.jpg").write_bytes(picture(index))
    (folder / "copy-of-0.jpg").write_bytes(picture(0))
    (folder / "broken.jpg").write_bytes(picture(4)[:200])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("a shopping list, not a photo")
    (folder / "0.jpg.json").write_text('{"sidecar": "metadata, not an image"}')
    (folder / ".hidden.jpg").write_bytes(picture(5))
    (folder / "sub" / "deep.jpg").write_bytes(picture(6))

    out, err, error = import_folder(folder, "--city", "Bergen", "--group-key", "box-1")

    assert "Found 9 file(s)" in out and "skipping 1 hidden; ignoring 1 without an image file extension" in out
    assert "Added 3, skipped 1 duplicate(s), failed 3." in out
    assert f"FAILED {folder / 'broken.jpg'}: truncated or corrupt image" in err
    assert f"FAILED {folder / 'empty.png'}: empty file" in err
    assert f"FAILED {folder / 'notes.jpg'}: not an image" in err
    assert error is not None and error.returncode == 1 and str(error) == "3 file(s) failed."
    assert Image.objects.count() == 3 == Embedding.objects.count()
    # Nothing half-written: the stored files are exactly those the rows name.
    stored = {str(p.relative_to(media_root)) for p in media_root.rglob("*") if p.is_file()}
    named = {name for row in Image.objects.values_list("file", "thumbnail") for name in row}
    assert stored == named and len(named) == 6
    assert set(Image.objects.values_list("source", "city", "group_key")) == {(Image.Source.FOLDER, "Bergen", "box-1")}


def test_recursive_and_rerun_skips_what_is_stored(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "top.jpg").write_bytes(picture(1))
    (tmp_path / "a" / "b" / "deep.jpg").write_bytes(picture(2))

    out, _, error = import_folder(tmp_path / "a", "--recursive")
    assert error is None and "Added 2, skipped 0 duplicate(s), failed 0." in out
    assert Image.objects.get(original_name="b/deep.jpg").source_ref == str(tmp_path / "a" / "b" / "deep.jpg")

    out, _, error = import_folder(tmp_path / "a", "--recursive")
    assert error is None and "Added 0, skipped 2 duplicate(s), failed 0." in out
    assert Image.objects.count() == 2


def test_not_a_folder(tmp_path):
    _, _, error = import_folder(tmp_path / "missing")
    assert error is not None and "is not a folder" in str(error)


def test_all_files_tries_files_without_an_image_extension(tmp_path):
    (tmp_path / "scan.dat").write_bytes(picture(7))
    (tmp_path / "readme.txt").write_text("hello")
    out, err, error = import_folder(tmp_path)
    assert "ignoring 2 without an image file extension" in out and error is None
    assert "Added 0, skipped 0 duplicate(s), failed 0." in out
    out, err, error = import_folder(tmp_path, "--all-files")
    assert "Added 1, skipped 0 duplicate(s), failed 1." in out
    assert f"FAILED {tmp_path / 'readme.txt'}: not an image" in err and error.returncode == 1
