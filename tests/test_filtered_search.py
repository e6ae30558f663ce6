"""Filtered search on a clustered collection whose metadata correlates with its vectors.

One generated collection (bench/clustered.py: trips that share a city, a camera and a few days,
bursts of near-duplicates) is loaded once for the module. Every filter case of ``filter_cases`` is
searched under two sets of thresholds: the shipped ones (at this size every filter is ranked
exactly) and ones scaled down so that the share of filters walking the HNSW graph is what it is at
a million images; both must keep recall@k >= 0.95 for k in 1, 10, 30, 100. Ground truth is numpy
over the half-precision values the database holds.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.clustered import exact_neighbours, filter_cases, image_ids_of, load_collection, make_collection, make_queries
from catalog import vector_search
from catalog.search import MAX_PAGE, SearchError, SearchParams
from catalog.vector_search import MAX_DEPTH, nearest, plan_for
from tests.conftest import rolled_back_at_end

pytestmark = pytest.mark.django_db

ROWS = 20_000
DIMS = 64
QUERIES = 8
KS = (1, 10, 30, 100)
# The shipped limits as shares of a million images (2%, 30%, 40%), applied to this collection.
SCALED = {"EXACT_MIN_ROWS": ROWS // 50, "EXACT_SHARE": 0.30, "EXACT_MAX_ROWS": ROWS * 2 // 5}


class Loaded:
    def __init__(self, collection, space, image_ids):
        self.collection, self.space, self.image_ids = collection, space, image_ids
        self.queries = make_queries(collection, QUERIES, seed=11)
        half = collection.vectors.astype(np.float16).astype(np.float32)
        self.scores = half @ self.queries.astype(np.float16).astype(np.float32).T  # (rows, queries)
        self.cases = filter_cases(collection)

    def truth(self, case, q: int, k: int) -> list[int]:
        positions = exact_neighbours(self.collection, case.mask, self.queries[q], k, scores=self.scores[:, q])
        return image_ids_of(positions, self.image_ids)

    def search(self, case, q: int, **kwargs) -> list:
        kwargs.setdefault("offset", 0)
        return nearest(space=self.space, vector=self.queries[q], image_filter=case.filters.embedding_q(), **kwargs)


@pytest.fixture(scope="module")
def loaded(django_db_setup, django_db_blocker):
    # Rolled back after the module: rows, space and index go without deleting 20,000 rows twice.
    with rolled_back_at_end(django_db_blocker):
        collection = make_collection(ROWS, dims=DIMS, seed=21)
        space, image_ids = load_collection(collection, space_name="test/clustered-search")
        yield Loaded(collection, space, image_ids)


@pytest.fixture(params=["shipped", "scaled"])
def thresholds(request, monkeypatch):
    if request.param == "scaled":
        for name, value in SCALED.items():
            monkeypatch.setattr(vector_search, name, value)
    return request.param


def test_the_cases_cover_both_plans_under_scaled_thresholds(loaded, monkeypatch):
    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    plans = {case.label: plan_for(space=loaded.space, image_filter=case.filters.embedding_q()) for case in loaded.cases}
    assert sum(p.exact for p in plans.values()) >= 10 and sum(not p.exact for p in plans.values()) >= 3, plans
    labels = " | ".join(plans)
    for needed in ("0 rows", "1 rows", "5 rows", "9 rows", "10 rows", "11 rows", "orientation square", "date:",
                   "2 mid-size cities", "+ portrait", "correlated"):
        assert needed in labels


def test_every_filter_case_finds_the_true_neighbours_in_order(loaded, thresholds):
    failures = []
    for case in loaded.cases:
        matching = int(case.mask.sum())
        recalls = {k: [] for k in KS}
        for q in range(QUERIES):
            found = loaded.search(case, q, limit=max(KS))
            ids = [n.image_id for n in found]
            distances = [n.distance for n in found]
            assert len(found) == min(max(KS), matching), case.label
            assert distances == sorted(distances), case.label  # true score order, whatever the plan
            assert set(ids) <= set(image_ids_of(np.flatnonzero(case.mask), loaded.image_ids)), case.label
            for k in KS:
                recalls[k].append(len(set(ids[:k]) & set(loaded.truth(case, q, k))) / max(1, min(k, matching)))
        for k in KS:
            if matching and np.mean(recalls[k]) < 0.95:
                failures.append(f"{case.label} k={k}: {np.mean(recalls[k]):.3f}")
    assert not failures, failures


def test_a_shorter_page_is_a_prefix_of_a_longer_one(loaded, thresholds):
    for case in loaded.cases[::3]:
        longest = [n.image_id for n in loaded.search(case, 0, limit=100)]
        for k in (1, 10, 30):
            assert [n.image_id for n in loaded.search(case, 0, limit=k)] == longest[:k], (case.label, k)


def test_min_score_cuts_the_ranking_exactly(loaded, thresholds):
    for case in loaded.cases:
        if case.mask.sum() < 12:
            continue
        ranking = loaded.search(case, 1, limit=40)
        cut = (ranking[7].distance + ranking[8].distance) / 2
        if ranking[7].distance == ranking[8].distance:
            continue
        kept = loaded.search(case, 1, limit=40, max_distance=cut)
        assert [n.image_id for n in kept] == [n.image_id for n in ranking[:8]], case.label


def test_pages_continue_each_other_down_to_the_depth_limit(loaded, thresholds):
    case = next(c for c in loaded.cases if c.label == "no filter")
    recalls = []
    for q in range(4):
        whole = [n.image_id for n in loaded.search(case, q, limit=MAX_DEPTH)]
        pages = [loaded.search(case, q, offset=offset, limit=50) for offset in range(0, MAX_DEPTH, 50)]
        assert [n.image_id for page in pages for n in page] == whole and len(set(whole)) == MAX_DEPTH
        recalls.append(len(set(whole) & set(loaded.truth(case, q, MAX_DEPTH))) / MAX_DEPTH)
    assert np.mean(recalls) >= 0.95, recalls
    with pytest.raises(ValueError, match="deep"):
        loaded.search(case, 2, offset=MAX_DEPTH, limit=10)


def test_pages_past_the_depth_limit_are_refused_with_a_reason():
    SearchParams(text="x", top_k=100, page=MAX_DEPTH // 100)
    with pytest.raises(SearchError, match=f"{MAX_DEPTH} deep at most"):
        SearchParams(text="x", top_k=100, page=MAX_DEPTH // 100 + 1)
    SearchParams(text="x", top_k=MAX_DEPTH // MAX_PAGE, page=MAX_PAGE)  # the depth limit itself
