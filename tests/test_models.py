import hashlib

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from catalog.models import Embedding, EmbeddingSpace, Image

pytestmark = pytest.mark.django_db


def _image(sha_seed: str = "a", **fields) -> Image:
    defaults = dict(file="images/x.jpg", sha256=hashlib.sha256(sha_seed.encode()).hexdigest(), width=10,
                    height=10, source=Image.Source.UPLOAD)
    return Image.objects.create(**{**defaults, **fields})


def test_migrations_are_complete_and_install_pgvector():
    call_command("makemigrations", "catalog", "--check", "--dry-run", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 8)


def test_same_bytes_are_never_stored_twice():
    _image("same")
    with pytest.raises(IntegrityError), transaction.atomic():
        _image("same", file="images/other.jpg")
    assert Image.objects.count() == 1


def test_invariants_are_enforced_by_the_database():
    for bad in (dict(width=0), dict(latitude=91.0), dict(longitude=-181.0), dict(status="failed")):
        with pytest.raises(IntegrityError), transaction.atomic():
            _image("bad", **bad)


def test_space_creation_builds_its_hnsw_index_once():
    space = EmbeddingSpace.objects.ensure(name="test/space-a", dimensions=8)
    assert EmbeddingSpace.objects.ensure(name="test/space-a", dimensions=8) == space
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [space.index_name])
        (definition,) = cursor.fetchone()
    assert "USING hnsw" in definition and "halfvec_ip_ops" in definition
    assert "halfvec(8)" in definition and f"space_id = {space.pk}" in definition


def test_space_refuses_vectors_of_another_dimension():
    EmbeddingSpace.objects.ensure(name="test/space-b", dimensions=8)
    with pytest.raises(ValueError, match="8-d"):
        EmbeddingSpace.objects.ensure(name="test/space-b", dimensions=16)


def test_one_embedding_per_image_and_space_but_many_spaces():
    image = _image()
    first = EmbeddingSpace.objects.ensure(name="test/one", dimensions=3)
    second = EmbeddingSpace.objects.ensure(name="test/two", dimensions=4)
    Embedding.objects.create(image=image, space=first, vector=[1, 0, 0])
    Embedding.objects.create(image=image, space=second, vector=[0, 1, 0, 0])
    with pytest.raises(IntegrityError), transaction.atomic():
        Embedding.objects.create(image=image, space=first, vector=[0, 0, 1])


def test_embedding_vectors_must_be_unit_length():
    space = EmbeddingSpace.objects.ensure(name="test/unit", dimensions=3)
    for bad in ([2, 0, 0], [0.5, 0.5, 0], [0, 0, 0]):
        with pytest.raises(IntegrityError, match="embedding_unit_vector"), transaction.atomic():
            Embedding.objects.create(image=_image(), space=space, vector=bad)
    Embedding.objects.create(image=_image(), space=space, vector=[0.6, 0.8, 0])


def _copies(embedding) -> tuple:
    return Embedding.objects.filter(pk=embedding.pk).values_list(
        "city", "width", "height", "taken_at", "group_key", "orientation").get()


def test_embedding_copies_of_the_filter_columns_follow_the_image():
    from datetime import datetime, timezone
    taken = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    image = _image(city="Lima", width=30, height=20, taken_at=taken, group_key="sku-1")
    space = EmbeddingSpace.objects.ensure(name="test/copies", dimensions=3)
    embedding = Embedding.objects.create(image=image, space=space, vector=[1, 0, 0])
    assert _copies(embedding) == ("Lima", 30, 20, taken, "sku-1", Embedding.Orientation.LANDSCAPE)

    image.city, image.width, image.height, image.taken_at, image.group_key = "Oslo", 20, 40, None, ""
    image.save()  # through the model
    assert _copies(embedding) == ("Oslo", 20, 40, None, "", Embedding.Orientation.PORTRAIT)
    Image.objects.filter(pk=image.pk).update(height=20, city="Kyiv")  # and through a bulk update
    assert _copies(embedding) == ("Kyiv", 20, 20, None, "", Embedding.Orientation.SQUARE)

    # A copy cannot be set apart from its image: the database writes it again.
    Embedding.objects.filter(pk=embedding.pk).update(city="Elsewhere", width=999)
    assert _copies(embedding)[:2] == ("Kyiv", 20)


def test_failed_status_keeps_its_reason():
    image = _image()
    image.mark_failed("file missing from storage")
    image.refresh_from_db()
    assert (image.status, image.status_reason) == ("failed", "file missing from storage")
