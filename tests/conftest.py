import io
from contextlib import contextmanager

import pytest
from PIL import Image as PILImage


@pytest.fixture(autouse=True)
def fresh_cache():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Every test writes its files under its own temporary folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(scope="module")
def module_media(tmp_path_factory):
    """One media folder for a whole module, for pictures stored once for all its tests (see
    ``rolled_back_at_end``); such a module shadows ``media_root`` with this."""
    from django.test import override_settings

    folder = tmp_path_factory.mktemp("media")
    with override_settings(MEDIA_ROOT=folder):
        yield folder


@contextmanager
def rolled_back_at_end(django_db_blocker):
    """Rows a module-scoped fixture makes once for all of a module's tests, never committed: each
    test runs in a savepoint inside this transaction and is rolled back to it (as in Django's
    ``TestCase.setUpTestData``), so no test sees another's writes, and the rows go with one
    ROLLBACK after the module instead of a DELETE. For modules whose tests use only ``django_db``
    (not ``transaction=True`` or a live server: other connections cannot see these rows)."""
    from django.db import transaction

    with django_db_blocker.unblock(), transaction.atomic():
        yield
        transaction.set_rollback(True)


def shared_pictures(make):
    """Fixtures for a module whose tests share pictures stored once (``rolled_back_at_end``):
    ``media_root, stored_ids, stored = shared_pictures(lambda: ingest_in_cities(...))`` at module level.
    ``stored`` reads the images afresh for each test: a test may change its copies."""

    @pytest.fixture(autouse=True)
    def media_root(module_media):  # shadows the per-test folder: the stored files serve every test
        return module_media

    @pytest.fixture(scope="module")
    def stored_ids(django_db_setup, django_db_blocker, module_media):
        with rolled_back_at_end(django_db_blocker):
            yield [image.pk for image in make()]

    @pytest.fixture
    def stored(stored_ids):
        from catalog.models import Image

        images = Image.objects.in_bulk(stored_ids)
        return [images[pk] for pk in stored_ids]

    return media_root, stored_ids, stored


def make_image_bytes(color=(200, 30, 30), size=(64, 48), fmt="JPEG", pattern: int = 0) -> bytes:
    """A small image made in memory; ``pattern`` varies the content so hashes differ."""
    image = PILImage.new("RGB", size, color)
    if pattern:
        for x in range(0, size[0], 4):
            image.putpixel((x, (x * pattern) % size[1]), (pattern % 256, 255 - pattern % 256, 90))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_bytes():
    return make_image_bytes


def ingest_pictures(pictures, **options):
    """Run the real ingestion pipeline on ``[(name, bytes), ...]``; returns the Images in order."""
    from catalog.ingest.pipeline import IngestItem, IngestOptions, ingest_items
    from catalog.models import Image

    report = ingest_items([IngestItem.from_bytes(name, data) for name, data in pictures],
                          options=IngestOptions(source=Image.Source.UPLOAD, **options))
    assert not report.failed, report.failed
    images = Image.objects.in_bulk([o.image_id for o in report.outcomes])
    return [images[o.image_id] for o in report.outcomes]


def varied_picture(index: int, size=(64, 48)) -> bytes:
    """Distinct, deterministic pictures: colour bands that differ per index."""
    image = PILImage.new("RGB", size)
    pixels = image.load()
    for x in range(size[0]):
        for y in range(size[1]):
            pixels[x, y] = ((x * (index + 3)) % 256, (y * (index * 7 + 1)) % 256, (index * 37) % 256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def ingest_in_cities(prefix: str, cities: list[str], size=lambda index: (64, 48)):
    """Ingest one distinct picture per entry of ``cities`` and give each its city."""
    from catalog.models import Image

    images = ingest_pictures([(f"{prefix}{i}.png", varied_picture(i, size(i))) for i in range(len(cities))])
    for image, city in zip(images, cities):
        image.city = city
    Image.objects.bulk_update(images, ["city"])
    return images


# --- Accounts -------------------------------------------------------------------------------------

WRITER_PERMISSIONS = ("add_importjob", "change_importjob", "view_importjob", "change_image", "delete_image")


def make_user(username: str, *permissions: str, password: str = "pw-for-tests-only", **fields):
    """A user holding the given catalog permissions (codenames)."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username=username, password=password, **fields)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="catalog", codename__in=permissions))
    return user


@pytest.fixture
def writer(db):
    """A user who may import, retry and edit images (not staff, not superuser)."""
    return make_user("writer", *WRITER_PERMISSIONS)


@pytest.fixture
def writer_client(client, writer):
    client.force_login(writer)
    return client


@pytest.fixture
def api_token(writer):
    """A bearer token of ``writer``: pass ``HTTP_AUTHORIZATION=f"Bearer {api_token}"``."""
    from catalog.accounts.tokens import create_token

    return create_token(user=writer)[1]


def import_folder(folder, *args):
    """Run ``manage.py import_images FOLDER *args``; returns (stdout, stderr, CommandError or None)."""
    from django.core.management import CommandError, call_command

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("import_images", str(folder), "--no-progress", *args, stdout=out, stderr=err)
    except CommandError as error:
        return out.getvalue(), err.getvalue(), error
    return out.getvalue(), err.getvalue(), None
