"""The clustered test data (bench/clustered.py): what it promises, and that its masks are the filters'."""

import numpy as np
import pytest

from bench.clustered import (
    all_scores,
    exact_neighbours,
    filter_cases,
    image_ids_of,
    load_collection,
    make_collection,
    make_queries,
    mask_of,
)
from catalog.models import Embedding, Image


@pytest.fixture(scope="module")
def collection():
    return make_collection(4000, dims=64, seed=3)


def test_same_seed_same_collection_other_seed_other(collection):
    again = make_collection(4000, dims=64, seed=3)
    other = make_collection(4000, dims=64, seed=4)
    for name in ("vectors", "city", "width", "height", "taken_at", "group_key", "cluster"):
        np.testing.assert_array_equal(getattr(again, name), getattr(collection, name))
    assert not np.array_equal(other.vectors, collection.vectors)


def test_collection_is_clustered_with_correlated_metadata(collection):
    c = collection
    assert np.allclose(np.linalg.norm(c.vectors, axis=1), 1.0, atol=1e-5)
    sizes = np.bincount(c.cluster)
    assert len(sizes) == 40 and sizes.min() >= 1 and sizes.max() >= 10 * np.median(sizes)
    # A photo's nearest other photo is from its own trip, and the trip shares a city and a camera.
    sample = np.arange(0, len(c), 20)
    scores = c.vectors[sample] @ c.vectors.T
    scores[np.arange(len(sample)), sample] = -2
    assert np.mean(c.cluster[scores.argmax(axis=1)] == c.cluster[sample]) > 0.95
    home_share = np.mean([np.max(np.unique(c.city[c.cluster == k], return_counts=True)[1]) / np.sum(c.cluster == k)
                          for k in range(40) if sizes[k] >= 20])
    assert 0.55 < home_share < 0.9
    assert 0.02 < np.isnat(c.taken_at).mean() < 0.15
    # Bursts: 2-5 near-identical shots under one key.
    keys, counts = np.unique(c.group_key[c.group_key != ""], return_counts=True)
    assert len(keys) > 10 and counts.min() >= 2 and counts.max() <= 5
    members = np.flatnonzero(c.group_key == keys[0])
    assert (c.vectors[members] @ c.vectors[members[0]]).min() > 0.99


def test_queries_are_near_the_collection_but_not_in_it(collection):
    queries = make_queries(collection, 20, seed=1)
    best = (collection.vectors @ queries.T).max(axis=0)
    assert best.min() > 0.6 and best.max() < 0.999


def test_exact_neighbours_rank_by_score_then_position(collection):
    query = make_queries(collection, 1, seed=2)[0]
    vectors = collection.vectors.copy()
    vectors[7] = vectors[5]  # a tie: the earlier row ranks first
    collection_with_tie = type(collection)(**{**collection.__dict__, "vectors": vectors})
    scores = vectors @ query
    mask = np.ones(len(vectors), dtype=bool)
    mask[::3] = False
    found = exact_neighbours(collection_with_tie, mask, query, 50, exclude=int(np.flatnonzero(mask)[0]))
    expected = sorted((i for i in np.flatnonzero(mask)[1:]), key=lambda i: (-scores[i], i))[:50]
    assert found.tolist() == expected
    assert exact_neighbours(collection_with_tie, None, vectors[5], 2).tolist() == [5, 7]
    np.testing.assert_array_equal(all_scores(collection, query[None])[:, 0], collection.vectors @ query)


def test_filter_cases_cover_every_kind_the_issue_lists(collection):
    cases = filter_cases(collection)
    labels = [case.label for case in cases]
    counts = {case.label: int(case.mask.sum()) for case in cases}
    for exact in (0, 1, 5, 9, 10, 11):
        assert counts[f"{exact} rows (correlated sizes)"] == exact
    assert counts["no filter"] == len(collection)
    assert len({label for label in labels if label.startswith("city ") and "+" not in label}) >= 6
    for word in ("orientation landscape", "orientation portrait", "orientation square", "date: one day",
                 "date: 2015-2019", "cities", "+ portrait", "+ one month"):
        assert any(word in label for label in labels), word
    shares = [case.mask.mean() for case in cases if case.label.startswith("city ") and "+" not in case.label]
    assert min(shares) < 0.005 and max(shares) > 0.25


@pytest.mark.slow
@pytest.mark.django_db
def test_loaded_collection_matches_the_masks_of_every_filter_case():
    collection = make_collection(3000, dims=32, seed=5)
    timings = {}
    space, image_ids = load_collection(collection, space_name="test/clustered", timings=timings)
    assert set(timings) == {"images_s", "embeddings_s", "index_s"}
    assert Embedding.objects.filter(space=space).count() == len(collection)
    # The triggers filled the embeddings' copies of the image columns.
    row = Embedding.objects.filter(space=space, image_id=image_ids[10]).values(
        "city", "width", "height", "group_key", "vector").get()
    assert (row["city"], row["width"], row["height"], row["group_key"]) == (
        collection.city[10], collection.width[10], collection.height[10], collection.group_key[10])
    np.testing.assert_allclose(np.asarray(row["vector"], dtype=np.float32), collection.vectors[10], atol=1e-3)
    for case in filter_cases(collection):
        expected = set(image_ids_of(np.flatnonzero(case.mask), image_ids))
        on_embeddings = set(Embedding.objects.filter(space=space).filter(case.filters.embedding_q())
                            .values_list("image_id", flat=True))
        on_images = set(Image.objects.filter(pk__in=image_ids.tolist()).filter(case.filters.as_q())
                        .values_list("pk", flat=True))
        assert on_embeddings == expected == on_images, case.label
        np.testing.assert_array_equal(mask_of(collection, case.filters), case.mask)
