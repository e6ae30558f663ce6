"""Switching models: a second space is back-filled while the first keeps serving."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from catalog.embedder import get_embedder
from catalog.models import Embedding, EmbeddingSpace, Image
from catalog.search import SearchParams, images_search
from tests.conftest import ingest_pictures, varied_picture

pytestmark = pytest.mark.django_db


def test_backfill_builds_the_new_space_and_the_old_one_keeps_serving(settings, capsys):
    images = ingest_pictures([(f"m{i}.png", varied_picture(i)) for i in range(5)])
    old_space = EmbeddingSpace.objects.get(name=get_embedder().space_name)

    settings.CLIP_MODEL = "ViT-S-32-alt"  # another architecture: 256-d vectors in the same table
    call_command("embed_images", "--no-progress")
    new_space = EmbeddingSpace.objects.get(name="ViT-S-32-alt/random-init")
    assert new_space.dimensions == 256
    assert Embedding.objects.filter(space=new_space).count() == 5
    assert "Embedded 5, failed 0." in capsys.readouterr().out
    assert len(images_search(params=SearchParams(text="a dog", top_k=5)).hits) == 5

    call_command("embed_images", "--no-progress")  # re-run: nothing left to do
    assert "0 image(s) to embed" in capsys.readouterr().out

    settings.CLIP_MODEL = "ViT-S-32"
    hits = images_search(params=SearchParams(text="a dog", top_k=5)).hits
    assert len(hits) == 5 and Embedding.objects.filter(space=old_space).count() == 5


def test_backfill_marks_images_whose_file_is_gone_as_failed(settings, capsys):
    images = ingest_pictures([(f"g{i}.png", varied_picture(i)) for i in range(3)])
    images[0].file.storage.delete(images[0].file.name)
    settings.CLIP_MODEL = "ViT-S-32-alt"
    with pytest.raises(CommandError, match="1 image"):
        call_command("embed_images", "--no-progress")
    images[0].refresh_from_db()
    assert images[0].status == Image.Status.FAILED and "cannot re-read" in images[0].status_reason
    assert Embedding.objects.filter(space__name="ViT-S-32-alt/random-init").count() == 2
