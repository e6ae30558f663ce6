"""Embeddings written by binary COPY (catalog/ingest/rows.py) are the rows bulk_create writes."""

import numpy as np
import pytest
from django.db import IntegrityError, transaction

from catalog.ingest.rows import copy_embeddings
from catalog.models import Embedding, EmbeddingSpace, Image

pytestmark = pytest.mark.django_db


def _image(index: int, **fields) -> Image:
    return Image.objects.create(file=f"images/{index}.jpg", thumbnail=f"thumbnails/{index}.jpg",
                                sha256=f"{index:064x}", width=fields.pop("width", 40), height=30, **fields)


def _unit(rng, dims: int) -> np.ndarray:
    vector = rng.normal(size=dims).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_copied_embeddings_equal_bulk_created_ones_with_the_image_columns_filled_in():
    rng = np.random.default_rng(0)
    small = EmbeddingSpace.objects.create(name="copy-8", dimensions=8)
    large = EmbeddingSpace.objects.create(name="copy-512", dimensions=512)
    images = [_image(i, city="Oslo" if i % 2 else "", width=40 + i) for i in range(6)]
    rows = [(image.pk, space.pk, _unit(rng, space.dimensions)) for image in images[:3] for space in (small, large)]
    assert copy_embeddings(rows) == 6
    twin = EmbeddingSpace.objects.create(name="bulk-512", dimensions=512)
    Embedding.objects.bulk_create([Embedding(image_id=image_id, space=twin, vector=vector)
                                   for image_id, space_id, vector in rows if space_id == large.pk])

    for image_id, space_id, vector in rows:
        copied = Embedding.objects.get(image_id=image_id, space_id=space_id)
        assert np.array_equal(np.asarray(copied.vector, np.float16), vector.astype(np.float16)), (image_id, space_id)
        image = Image.objects.get(pk=image_id)  # the triggers copied the filter columns
        assert (copied.city, copied.width, copied.height, copied.orientation) == (
            image.city, image.width, image.height, Embedding.Orientation.LANDSCAPE)
        assert copied.created_at is not None
        if space_id == large.pk:
            assert copied.vector == Embedding.objects.get(image_id=image_id, space=twin).vector
    assert copy_embeddings([]) == 0


@pytest.mark.parametrize("vector", [np.full(8, 0.01, np.float32), np.full(8, np.nan, np.float32)],
                         ids=["not unit", "nan"])
def test_a_refused_row_fails_the_whole_copy(vector):
    space = EmbeddingSpace.objects.create(name="copy-refused", dimensions=8)
    good, bad = _image(1), _image(2)
    unit = np.ones(8, np.float32) / np.sqrt(8)
    with pytest.raises(Exception) as raised, transaction.atomic():
        copy_embeddings([(good.pk, space.pk, unit), (bad.pk, space.pk, vector)])
    assert isinstance(raised.value, IntegrityError) or "NaN" in str(raised.value)
    assert not Embedding.objects.filter(space=space).exists()
