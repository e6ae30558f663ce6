"""vector_search.nearest against the real PostgreSQL + pgvector, checked against numpy.

One corpus of 4,000 images with random 32-d unit vectors is built once for the module (rolled
back at the end). Filters hit 0.1%, 1%, 10%, 50% and 100% of it. Each check runs with the
plan ``nearest`` picks itself ("auto") and with the exact and the HNSW plan forced, so both code
paths are covered at every selectivity.
"""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection
from django.db.models import Q

from bench.clustered import Collection, load_collection
from catalog import vector_search
from catalog.models import Embedding, EmbeddingSpace
from catalog.vector_search import nearest, plan_for
from tests.conftest import rolled_back_at_end

pytestmark = pytest.mark.django_db

ROWS = 4_000
DIMS = 32
SPACE = "test/vector-search-32"
# width = 100 + i % 1000, so "width <= 100 + x" keeps (x + 1) per mille of the corpus
SELECTIVITIES = {
    "0.1%": Q(width__lte=100),
    "1%": Q(width__lte=109),
    "10%": Q(city__in=["Oslo"]),  # i % 10 == 3
    "50%": Q(width__lte=599),
    "100%": Q(),
}
STRATEGIES = {"auto": None, "exact": 10**9, "hnsw": -1}  # values for vector_search.EXACT_MAX_ROWS


class Corpus:
    def __init__(self, space, ids, vectors, widths, cities, groups):
        self.space, self.ids, self.vectors = space, ids, vectors
        self.widths, self.cities, self.groups = widths, cities, groups
        self.queries = unit_vectors(np.random.default_rng(99), 12)
        # What the database compares: vectors and queries are stored and sent at half precision.
        self.stored = halfvec(vectors)

    def mask(self, name: str) -> np.ndarray:
        return {
            "0.1%": self.widths <= 100, "1%": self.widths <= 109, "10%": self.cities == "Oslo",
            "50%": self.widths <= 599, "100%": np.ones(len(self.ids), dtype=bool),
        }[name]

    def ranking(self, query, mask) -> tuple[np.ndarray, np.ndarray]:
        """Exact (image ids, cosine distances) of the matching images, closest first, ties by id."""
        distances = 1.0 - self.stored[mask] @ halfvec(query[None])[0]
        ids = self.ids[mask]
        order = np.lexsort((ids, distances))
        return ids[order], distances[order]


def halfvec(vectors):
    """What the database holds and compares: the vectors at half precision (inner product)."""
    return vectors.astype(np.float16).astype(np.float32)


def unit_vectors(rng, n):
    v = rng.standard_normal((n, DIMS))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(django_db_setup, django_db_blocker):
    # COPYed by bench/clustered.py's loader (the HNSW index built once after the rows, several times
    # faster than ORM inserts growing it row by row) and rolled back after the module
    # (tests/conftest.py rolled_back_at_end).
    with rolled_back_at_end(django_db_blocker):
        rng = np.random.default_rng(7)
        vectors = unit_vectors(rng, ROWS)
        i = np.arange(ROWS)
        cities = np.where(i % 10 == 3, "Oslo", "Lima")
        groups = np.where(i % 5 == 0, "", np.char.add("g", (i % 300).astype(str)))  # ~ten a group; every fifth alone
        collection = Collection(vectors=vectors, city=cities, width=(100 + i % 1000).astype(np.int32),
                                height=(100 + rng.integers(0, 1000, size=ROWS)).astype(np.int32),
                                taken_at=np.full(ROWS, np.datetime64("NaT"), dtype="datetime64[us]"),
                                group_key=groups, cluster=np.zeros(ROWS, dtype=np.int32))
        space, ids = load_collection(collection, space_name=SPACE)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE catalog_image")
        yield Corpus(space, ids, vectors, collection.width, cities,
                     np.where(groups == "", np.char.add("#", ids.astype(str)), groups))


@pytest.fixture(params=list(STRATEGIES))
def strategy(request, monkeypatch):
    if STRATEGIES[request.param] is not None:
        monkeypatch.setattr(vector_search, "EXACT_MAX_ROWS", STRATEGIES[request.param])
    return request.param


def search(corpus, query, name, **kwargs):
    kwargs.setdefault("offset", 0)
    return nearest(space=corpus.space, vector=query, image_filter=SELECTIVITIES[name], **kwargs)


def recall(found, truth) -> float:
    return len(set(found) & set(truth)) / len(truth) if len(truth) else 1.0


@pytest.mark.parametrize("name", list(SELECTIVITIES))
@pytest.mark.parametrize("k", [1, 10, 100])
def test_returns_k_rows_with_recall_at_least_095(corpus, strategy, name, k):
    mask = corpus.mask(name)
    recalls = []
    for query in corpus.queries:
        found = search(corpus, query, name, limit=k)
        truth_ids, truth_distances = corpus.ranking(query, mask)
        assert len(found) == min(k, mask.sum())  # exactly k whenever k match
        distances = [n.distance for n in found]
        assert distances == sorted(distances)
        assert mask[np.isin(corpus.ids, [n.image_id for n in found])].all()  # all pass the filter
        recalls.append(recall([n.image_id for n in found], truth_ids[:k]))
        if strategy == "exact":
            np.testing.assert_allclose(distances, truth_distances[:k], atol=1e-5)
    assert np.mean(recalls) >= 0.95, recalls


@pytest.mark.parametrize("name", ["1%", "50%", "100%"])
def test_pages_are_slices_of_one_ranking(corpus, strategy, name):
    for query in corpus.queries[:4]:
        k = 10
        pages = [search(corpus, query, name, offset=page * k, limit=k) for page in range(3)]
        flat = [n.image_id for page in pages for n in page]
        assert flat == [n.image_id for n in search(corpus, query, name, limit=3 * k)]
        assert len(flat) == len(set(flat)) == 3 * k
        # the way catalog.search asks: one extra row to know whether a next page exists
        overlapping = [search(corpus, query, name, offset=page * k, limit=k + 1) for page in range(3)]
        assert [n.image_id for page in overlapping for n in page[:k]] == flat
        assert [page[k].image_id for page in overlapping[:2]] == [flat[k], flat[2 * k]]


@pytest.mark.parametrize("name", ["10%", "100%"])
def test_max_distance_cuts_the_ranking(corpus, strategy, name):
    query = corpus.queries[0]
    truth_ids, truth_distances = corpus.ranking(query, corpus.mask(name))
    cutoff = float(truth_distances[7]) + 1e-6  # eight rows qualify
    found = search(corpus, query, name, limit=20, max_distance=cutoff)
    assert found and all(n.distance <= cutoff for n in found)
    if strategy == "exact":
        assert [n.image_id for n in found] == truth_ids[:8].tolist()
    else:  # the cut applies to the rows the scan reached
        assert recall([n.image_id for n in found], truth_ids[:8]) >= 0.8
    assert search(corpus, query, name, limit=20, max_distance=float(truth_distances[0]) - 1e-4) == []


@pytest.mark.parametrize("name", ["10%", "100%"])
def test_collapse_keeps_the_closest_image_of_each_group(corpus, strategy, name):
    mask = corpus.mask(name)
    group_of = dict(zip(corpus.ids.tolist(), corpus.groups.tolist()))
    for query in corpus.queries[:4]:
        truth_ids, truth_distances = corpus.ranking(query, mask)
        closest: dict[str, tuple[int, float]] = {}
        for image_id, distance in zip(truth_ids.tolist(), truth_distances.tolist()):
            closest.setdefault(group_of[image_id], (image_id, distance))
        collapsed_truth = [image_id for image_id, _ in closest.values()]  # in ranking order
        found = search(corpus, query, name, limit=30, collapse_groups=True)
        groups = [group_of[n.image_id] for n in found]
        assert len(found) == 30 and len(set(groups)) == 30
        # with HNSW, "closest" means closest among the rows the scan reached
        if strategy == "exact":
            assert [n.image_id for n in found] == collapsed_truth[:30]
        else:
            assert recall([n.image_id for n in found], collapsed_truth[:30]) >= 0.9
        page_two = search(corpus, query, name, offset=30, limit=30, collapse_groups=True)
        assert not {group_of[n.image_id] for n in page_two} & set(groups)


def test_collapse_returns_every_group_when_fewer_than_limit(corpus, strategy):
    found = search(corpus, corpus.queries[0], "1%", limit=100, collapse_groups=True)
    group_of = dict(zip(corpus.ids.tolist(), corpus.groups.tolist()))
    groups = {group_of[i] for i in corpus.ids[corpus.mask("1%")].tolist()}
    assert len(found) == len(groups) and {group_of[n.image_id] for n in found} == groups


def test_iterative_scan_fills_a_filtered_page_without_falling_back(corpus, monkeypatch, caplog):
    monkeypatch.setattr(vector_search, "EXACT_MAX_ROWS", -1)
    caplog.set_level("DEBUG", logger=vector_search.__name__)
    found = search(corpus, corpus.queries[0], "10%", limit=100)
    assert len(found) == 100
    assert not [r for r in caplog.records if "ran out" in r.getMessage()]


def test_a_small_space_is_ranked_exactly_whatever_the_filter(corpus):
    for name in SELECTIVITIES:
        assert plan_for(space=corpus.space, image_filter=SELECTIVITIES[name]).exact, name


def test_plan_counts_the_matching_rows_and_walks_the_graph_only_above_the_exact_limit(corpus, monkeypatch):
    monkeypatch.setattr(vector_search, "EXACT_MIN_ROWS", 100)
    monkeypatch.setattr(vector_search, "EXACT_SHARE", 0.0)
    for name, exact in (("0.1%", True), ("1%", True), ("10%", False), ("50%", False), ("100%", False)):
        plan = plan_for(space=corpus.space, image_filter=SELECTIVITIES[name])
        assert plan.exact is exact, (name, plan)
        if name in ("0.1%", "1%"):  # counted, not estimated
            assert plan.matching == corpus.mask(name).sum()
        elif name != "100%":
            # 400 or 2,000 rows estimated, far past the limit of 100: one column's estimate is trusted.
            assert plan.matching is None
            assert plan.ef_search > vector_search.EF_SEARCH_UNFILTERED  # a narrower filter walks further
    # Two columns (a correlated pair is misestimated): counted, and counting stops past the limit.
    plan = plan_for(space=corpus.space, image_filter=SELECTIVITIES["10%"] & Q(width__gte=0))
    assert not plan.exact and plan.matching == 101
    unfiltered = plan_for(space=corpus.space, image_filter=Q())
    assert unfiltered.matching is None and unfiltered.ef_search == vector_search.EF_SEARCH_UNFILTERED_DENSE


def test_the_unfiltered_walk_is_as_wide_as_the_graph_it_walks_needs(corpus, monkeypatch):
    """A graph built with ef_construction 128 (before 2026-11-26) misses tight trips below ef_search 800;
    one built with the current 256 reaches them from 200 (bench/README.md)."""
    monkeypatch.setattr(vector_search, "EXACT_MAX_ROWS", -1)
    monkeypatch.setattr(corpus.space, "graph_parameters", lambda **kwargs: (16, 128))
    vector_search._graph_builds.clear()
    assert plan_for(space=corpus.space, image_filter=Q()).ef_search == vector_search.EF_SEARCH_UNFILTERED == 800
    monkeypatch.setattr(corpus.space, "graph_parameters", lambda **kwargs: (16, 256))
    vector_search._graph_builds.clear()
    assert plan_for(space=corpus.space, image_filter=Q()).ef_search == vector_search.EF_SEARCH_UNFILTERED_DENSE
    vector_search._graph_builds.clear()


def test_unfiltered_query_is_served_by_the_hnsw_index(corpus, monkeypatch):
    """EXPLAIN the very statement nearest() sends, inside its transaction (its SET LOCALs apply)."""
    monkeypatch.setattr(vector_search, "EXACT_MAX_ROWS", -1)
    plans = []

    def explain_ordered_queries(execute, sql, params, many, context):
        if "ORDER BY" in sql and "<#>" in sql:
            raw = context["connection"].connection  # the psycopg connection: not wrapped again
            plans.append("\n".join(row[0] for row in raw.execute("EXPLAIN " + sql, params)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(explain_ordered_queries):
        found = search(corpus, corpus.queries[0], "100%", limit=10)
    assert len(found) == 10 and len(plans) == 1
    assert f"Index Scan using {corpus.space.index_name}" in plans[0], plans[0]


def test_settings_do_not_leak_into_the_callers_transaction(corpus, strategy):
    read = "SELECT current_setting('enable_sort'), current_setting('random_page_cost'), current_setting('hnsw.ef_search')"
    with connection.cursor() as cursor:
        cursor.execute(read)
        before = cursor.fetchone()
        search(corpus, corpus.queries[0], "100%", limit=10)
        cursor.execute(read)
        assert cursor.fetchone() == before


def test_naive_filtered_hnsw_query_returns_too_few_rows(corpus):
    """The problem this module solves: pgvector filters after taking ef_search candidates."""
    from pgvector.django import MaxInnerProduct
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = 40")
        cursor.execute("SET LOCAL enable_sort = off")  # the planner would sort 4,000 rows exactly
    naive = (Embedding.objects.filter(space=corpus.space).filter(SELECTIVITIES["10%"])
             .annotate(distance=MaxInnerProduct(corpus.space.typed_vector(), corpus.queries[0]))
             .order_by("distance")[:40])
    assert len(naive) < 40
    assert len(search(corpus, corpus.queries[0], "10%", limit=40)) == 40


def test_empty_space_and_zero_limit(corpus):
    empty = EmbeddingSpace.objects.create(name="test/empty", dimensions=DIMS)
    assert nearest(space=empty, vector=corpus.queries[0], image_filter=Q(), offset=0, limit=10) == []
    assert search(corpus, corpus.queries[0], "100%", limit=0) == []


@pytest.mark.parametrize("bad", [np.zeros(DIMS), np.full(DIMS, np.nan), np.full(DIMS, np.inf), np.full(DIMS, 1e-30)])
def test_a_query_vector_without_a_direction_is_refused(corpus, bad):
    with pytest.raises(ValueError, match="finite and not zero"):
        search(corpus, bad.astype(np.float32), "100%", limit=5)


def test_a_query_vector_of_any_length_ranks_like_its_unit_vector(corpus):
    query = corpus.queries[0]
    assert search(corpus, query * 1e6, "10%", limit=10) == search(corpus, query, "10%", limit=10)
