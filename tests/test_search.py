"""images_search: the one search function, against the real database and embedder.

The corpus of 24 pictures is ingested once for the module and rolled back after it
(tests/conftest.py rolled_back_at_end): each test runs in its own savepoint, so a test that
writes (deletes an embedding) leaves the corpus whole for the next, which ``corpus`` checks.
"""

import io
from datetime import UTC, date, datetime

import numpy as np
import pytest
from PIL import Image as PILImage

from catalog.embedder import ClipEmbedder, get_embedder
from catalog.models import Embedding, EmbeddingSpace
from catalog.search import ImageFilters, SearchError, SearchParams, images_search
from tests.conftest import ingest_pictures, rolled_back_at_end, varied_picture

pytestmark = pytest.mark.django_db

CITIES = ["Paris", "Hangzhou", "Zurich", "Lima"]
SIZES = [(64, 48), (48, 64), (56, 56)]  # landscape, portrait, square
PICTURES = 24


@pytest.fixture(autouse=True)
def media_root(module_media):
    """Shadows tests/conftest.py's per-test folder: the corpus's files serve every test here."""
    return module_media


@pytest.fixture(scope="module", autouse=True)
def texts_embedded_once():
    """The text tower is deterministic and dominated this module's time (tens of searches, eight
    texts): each distinct text is run through it once per module and its vector reused."""
    real, memo = ClipEmbedder.embed_texts, {}

    def embed_texts(self, texts):
        missing = [text for text in dict.fromkeys(texts) if (self.config, text) not in memo]
        if missing:
            memo.update(((self.config, text), vector) for text, vector in zip(missing, real(self, missing)))
        return np.stack([memo[self.config, text] for text in texts]) if texts else real(self, texts)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClipEmbedder, "embed_texts", embed_texts)
        yield


@pytest.fixture(scope="module")
def stored_corpus(django_db_setup, django_db_blocker, module_media):
    with rolled_back_at_end(django_db_blocker):
        pictures = [(f"p{i}.png", varied_picture(i, SIZES[i % 3])) for i in range(PICTURES)]
        images = ingest_pictures(pictures)
        for i, image in enumerate(images):
            image.city = CITIES[i % 4]
            image.taken_at = datetime(2020 + i % 4, 6, 1 + i, 12, tzinfo=UTC)
            image.group_key = f"g{i // 3}"
            image.save()
        yield images


@pytest.fixture
def corpus(stored_corpus):
    """The module's corpus, whole: no earlier test's write may outlive that test."""
    assert Embedding.objects.filter(image__in=stored_corpus).count() == len(stored_corpus) == PICTURES
    return stored_corpus


def exact_ranking(query_vector, images):
    """Ground truth: cosine similarity computed in numpy over the given images."""
    space = EmbeddingSpace.objects.get(name=get_embedder().space_name)
    vectors = dict(Embedding.objects.filter(space=space, image__in=images).values_list("image_id", "vector"))
    query = np.asarray(query_vector, dtype=np.float16).astype(np.float32)  # sent at half precision

    scored = sorted(((float(np.dot(query, np.asarray(vectors[i.pk], dtype=np.float32))), i.pk) for i in images),
                    reverse=True)
    return [pk for _, pk in scored]


def search(**kwargs):
    return images_search(params=SearchParams(**kwargs))


def test_text_search_returns_top_k_in_score_order(corpus):
    results = search(text="a colourful striped pattern", top_k=5)
    scores = [hit.score for hit in results.hits]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    expected = exact_ranking(get_embedder().embed_text("a colourful striped pattern"), corpus)[:5]
    assert [hit.image.pk for hit in results.hits] == expected
    assert results.has_next


def test_chinese_text_query_is_accepted(corpus):
    assert len(search(text="一只毛茸茸的小狗在草地上奔跑", top_k=3).hits) == 3


@pytest.mark.parametrize("filters, keep", [
    (ImageFilters(cities=("Paris", "Lima")), lambda i: i.city in ("Paris", "Lima")),
    (ImageFilters(min_width=50, max_width=60), lambda i: 50 <= i.width <= 60),
    (ImageFilters(min_height=60), lambda i: i.height >= 60),
    (ImageFilters(orientation="landscape"), lambda i: i.width > i.height),
    (ImageFilters(orientation="portrait"), lambda i: i.width < i.height),
    (ImageFilters(orientation="square"), lambda i: i.width == i.height),
    (ImageFilters(taken_from=date(2021, 1, 1), taken_to=date(2022, 12, 31)),
     lambda i: 2021 <= i.taken_at.year <= 2022),
    (ImageFilters(cities=("Zurich",), orientation="portrait"), lambda i: i.city == "Zurich" and i.height > i.width),
])
def test_filters_combine_with_vector_ordering(corpus, filters, keep):
    matching = [image for image in corpus if keep(image)]
    assert matching, "the corpus must exercise this filter"
    results = search(text="sunset", filters=filters, top_k=100)
    expected = exact_ranking(get_embedder().embed_text("sunset"), matching)
    assert [hit.image.pk for hit in results.hits] == expected


def test_query_image_finds_the_same_picture_first(corpus):
    target = corpus[7]
    with target.file.open("rb") as handle:
        picture = PILImage.open(io.BytesIO(handle.read())).convert("RGB")
    results = search(image=picture, top_k=3)
    assert results.hits[0].image.pk == target.pk
    assert results.hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_more_like_this_uses_the_stored_vector_and_excludes_the_image(corpus, monkeypatch):
    embedder = get_embedder()
    monkeypatch.setattr(embedder, "embed_images", lambda *a: pytest.fail("must not re-embed"))
    target = corpus[3]
    results = search(similar_to=target.pk, top_k=5)
    ids = [hit.image.pk for hit in results.hits]
    assert target.pk not in ids and len(ids) == 5
    vector = np.asarray(Embedding.objects.get(image=target).vector)
    assert ids == exact_ranking(vector, [i for i in corpus if i.pk != target.pk])[:5]


def test_more_like_this_on_unknown_or_unembedded_image_is_a_clear_error(corpus):
    with pytest.raises(SearchError, match="does not exist"):
        search(similar_to=999999)
    Embedding.objects.filter(image=corpus[0]).delete()
    with pytest.raises(SearchError, match="no embedding"):
        search(similar_to=corpus[0].pk)


def test_pages_are_stable(corpus):
    pages = [search(text="mountains", top_k=5, page=n) for n in (1, 2, 3)]
    together = [hit.image.pk for page in pages for hit in page.hits]
    assert together == [hit.image.pk for hit in search(text="mountains", top_k=15).hits]
    assert len(set(together)) == 15
    last = search(text="mountains", top_k=5, page=5)
    assert len(last.hits) == 4 and not last.has_next


def test_min_score_cuts_weak_matches(corpus):
    everything = search(text="forest", top_k=100).hits
    cutoff = everything[5].score
    kept = search(text="forest", top_k=100, min_score=cutoff).hits
    assert [h.image.pk for h in kept] == [h.image.pk for h in everything if h.score >= cutoff]


def test_collapse_keeps_the_best_image_of_each_group(corpus):
    hits = search(text="ocean", top_k=100, collapse_groups=True).hits
    groups = [hit.image.group_key for hit in hits]
    assert len(groups) == len(set(groups)) == 8
    best = {}
    for hit in search(text="ocean", top_k=100).hits:
        best.setdefault(hit.image.group_key, hit.image.pk)
    assert {hit.image.pk for hit in hits} == set(best.values())


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"),
    ({"text": "a", "similar_to": 1}, "exactly one"),
    ({"text": "   "}, "exactly one"),
    ({"text": "a", "top_k": 0}, "top_k"),
    ({"text": "a", "top_k": 101}, "top_k"),
    ({"text": "a", "page": 0}, "page"),
    ({"text": "a", "min_score": 1.5}, "min_score"),
])
def test_bad_parameters_are_rejected_with_a_message(kwargs, message):
    with pytest.raises(SearchError, match=message):
        SearchParams(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"min_width": 10, "max_width": 5}, "width range"),
    ({"min_height": 10, "max_height": 5}, "height range"),
    ({"taken_from": date(2022, 1, 2), "taken_to": date(2022, 1, 1)}, "date range"),
    ({"orientation": "diagonal"}, "orientation"),
])
def test_bad_filters_are_rejected_with_a_message(kwargs, message):
    with pytest.raises(SearchError, match=message):
        ImageFilters(**kwargs)


def test_query_count_does_not_grow_with_top_k(corpus, django_assert_max_num_queries):
    search(text="warm-up", top_k=1)
    with django_assert_max_num_queries(8) as small:
        search(text="city lights", top_k=2)
    with django_assert_max_num_queries(len(small.captured_queries)):
        search(text="city lights", top_k=20)
