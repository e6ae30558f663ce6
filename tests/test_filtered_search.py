"""Filtered search on a clustered collection whose metadata correlates with its vectors.

One generated collection (bench/clustered.py: trips that share a city, a camera and a few days,
bursts of near-duplicates) is loaded once for the module. Every filter case of ``filter_cases`` is
searched under three sets of thresholds: the shipped ones (at this size every filter is ranked
exactly), ones scaled down so that the share of filters walking the HNSW graph is what it is at
a million images, and those with value graphs (``manage.py models graphs``) scaled alike; all must
keep recall@k >= 0.95 for k in 1, 10, 30, 100. Ground truth is numpy
over the half-precision values the database holds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import numpy as np
import pytest
from django.db import transaction
from django.db.models import Q

from bench.clustered import exact_neighbours, filter_cases, image_ids_of, load_collection, make_collection, make_queries
from catalog import spaces, vector_search
from catalog.models import Embedding, EmbeddingSpace, FilterGraph
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
SCALED_GRAPH_MIN_ROWS = ROWS * 3 // 200  # vector_search.GRAPH_MIN_ROWS as a share of a million images


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
        loaded = Loaded(collection, space, image_ids)
        # Its value graphs (cities, orientations, years of 300 to 10,000 rows), built here to be rolled
        # back with the rest; tests without the "graphs" thresholds do not see them.
        loaded.graph_changes = spaces.refresh_filter_graphs(name=space.name, min_rows=SCALED_GRAPH_MIN_ROWS)
        vector_search.forget_space(space.pk)
        yield loaded


@pytest.fixture
def value_graphs(loaded):
    return loaded.graph_changes


@pytest.fixture(params=["shipped", "scaled", "graphs"])
def thresholds(request, monkeypatch):
    if request.param != "shipped":
        for name, value in SCALED.items():
            monkeypatch.setattr(vector_search, name, value)
    if request.param != "graphs":
        monkeypatch.setattr(vector_search, "_graphs_of", lambda space, using: {})
    return request.param


def test_the_cases_cover_both_plans_under_scaled_thresholds(loaded, monkeypatch):
    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    monkeypatch.setattr(vector_search, "_graphs_of", lambda space, using: {})
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


def test_value_graphs_serve_the_filters_they_cover(loaded, value_graphs, monkeypatch):
    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    built = {(c.column, c.value) for c in value_graphs if c.action == "built"}
    assert {column for column, _ in built} == {"city", "orientation", "year"}, built
    assert all(SCALED_GRAPH_MIN_ROWS <= c.rows <= vector_search.GRAPH_MAX_SHARE * ROWS for c in value_graphs)
    plans = {case.label: plan_for(space=loaded.space, image_filter=case.filters.embedding_q()) for case in loaded.cases}
    walked = {label: str(plan) for label, plan in plans.items() if any(part.graph for part in plan.parts)}
    assert any("graph city=" in plan for plan in walked.values()), plans
    assert any("graphs year=" in plan for plan in walked.values()), plans  # a range across several years
    # Years, and blocks of years (a range of whole years walks one graph per block), walk as wide as a
    # walk goes.
    assert any("-" in value for column, value in built if column == "year"), built
    years = [part for plan in plans.values() for part in plan.parts
             if part.graph.startswith("year=") and part.matching is None]
    assert any("-" in part.graph.removeprefix("year=") for part in years), plans  # a block
    assert all(part.ef_search == vector_search.EF_SEARCH_YEARS for part in years), plans
    # A value's rows alone walk its graph as an unfiltered space is walked, without counting them.
    whole = [plans[label] for label in plans if label.startswith("city ") and "+" not in label
             and plans[label].parts[0].graph]
    assert whole and all(len(p.parts) == 1 and p.parts[0].ef_search == vector_search.EF_SEARCH_GRAPH
                         and p.matching is None for p in whole), whole
    # With more conditions, the part is counted and walked wider, or ranked exactly below GRAPH_SHARE.
    combined = [part for label, plan in plans.items() if "+" in label for part in plan.parts if part.graph]
    assert combined and all(part.matching is not None and part.ef_search > vector_search.EF_SEARCH_GRAPH
                            for part in combined), combined


def test_each_part_walks_its_own_value_graph(loaded, value_graphs, monkeypatch):
    """EXPLAIN the very statements nearest() sends, inside its transaction (its SET LOCALs apply)."""
    from django.db import connection

    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    graphs = {f"{g.column}={g.value}": g.index_name for g in FilterGraph.objects.filter(space=loaded.space)}
    plans = []

    def explain_ordered_queries(execute, sql, params, many, context):
        if "ORDER BY" in sql and "<#>" in sql:
            raw = context["connection"].connection
            plans.append("\n".join(row[0] for row in raw.execute("EXPLAIN " + sql, params)))
        return execute(sql, params, many, context)

    checked = 0
    for case in loaded.cases:
        plan = plan_for(space=loaded.space, image_filter=case.filters.embedding_q())
        walks = [part.graph for part in plan.parts if part.graph]
        if not walks:
            continue
        plans.clear()
        with connection.execute_wrapper(explain_ordered_queries):
            loaded.search(case, 0, limit=10)
        for graph in walks:  # one statement per part, in the plan's order
            assert sum(graphs[graph] in explained for explained in plans) == 1, (case.label, graph, plans)
        checked += 1
    assert checked >= 3


def test_a_walk_that_gives_up_in_one_part_is_ranked_exactly_and_merged_in_order(loaded, value_graphs, monkeypatch):
    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    monkeypatch.setattr(vector_search, "MAX_SCAN_TUPLES", 5)  # every walk gives up at once
    case = next(c for c in loaded.cases if c.label == "date: 2015-2019")  # several year graphs
    assert len(plan_for(space=loaded.space, image_filter=case.filters.embedding_q()).parts) > 1
    for q in range(3):
        found = loaded.search(case, q, limit=30)
        assert [n.image_id for n in found] == loaded.truth(case, q, 30)


def test_graph_refresh_keeps_drops_and_refuses_a_second_run(loaded, value_graphs):
    from django.db import connection

    name = loaded.space.name
    again = spaces.refresh_filter_graphs(name=name, min_rows=SCALED_GRAPH_MIN_ROWS)
    assert {c.action for c in again} == {"kept"} and len(again) == len(value_graphs)
    # This session's refresh holds the space's graph lock until its transaction ends: another
    # process cannot take it (tests/test_model_lifecycle.py: the refusal on the other side).
    from django.db import connections
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(hashtext('catalog.graphs'), hashtext(%s))", [name])
            assert cursor.fetchone()[0] is False
    finally:
        other.close()
    # Fewer than half the rows now needed: every graph and its index go.
    largest = max(c.rows for c in value_graphs)
    with transaction.atomic():  # rolled back: the other tests keep the graphs
        dropped = spaces.refresh_filter_graphs(name=name, min_rows=4 * largest)
        assert {c.action for c in dropped} == {"dropped"} and len(dropped) == len(value_graphs)
        assert not FilterGraph.objects.filter(space=loaded.space).exists()
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s)",
                           [[FilterGraph(space=loaded.space, column=c.column, value=c.value).index_name for c in dropped]])
            assert cursor.fetchone()[0] == 0
        transaction.set_rollback(True)
    vector_search.forget_space(loaded.space.pk)


def test_models_graphs_command_reports_each_graph_and_refuses_bad_input(loaded, value_graphs):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("models", "graphs", loaded.space.name, "--min-rows", str(SCALED_GRAPH_MIN_ROWS), stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(value_graphs) + 1 and all(": kept the graph of " in line for line in lines[:-1])
    assert lines[-1] == f"{loaded.space.name}: 0 graph(s) built, {len(value_graphs)} kept, 0 dropped."
    listing = StringIO()
    call_command("models", stdout=listing)
    assert f"{len(value_graphs)} value graph(s)" in listing.getvalue()
    with pytest.raises(CommandError, match="at least 1"):
        call_command("models", "graphs", loaded.space.name, "--min-rows", "0")
    with pytest.raises(CommandError, match="No embedding space"):
        call_command("models", "graphs", "no/such-space")


def test_a_graph_whose_index_is_gone_is_not_walked(loaded, value_graphs, monkeypatch):
    from django.db import connection

    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    graph = FilterGraph.objects.filter(space=loaded.space, column="city").order_by("-rows").first()
    case_filter = graph.condition()
    assert plan_for(space=loaded.space, image_filter=case_filter).parts[0].graph == f"city={graph.value}"
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f'DROP INDEX "{graph.index_name}"')
        vector_search.forget_space(loaded.space.pk)
        assert not any(part.graph for part in plan_for(space=loaded.space, image_filter=case_filter).parts)
        transaction.set_rollback(True)
    vector_search.forget_space(loaded.space.pk)


def test_graphs_for_a_city_with_a_percent_sign_and_for_a_year_before_1000(loaded, value_graphs, monkeypatch):
    """Values a manifest can bring: "%" is not a placeholder in the index's WHERE, and year 500's
    value is four digits like every other year's."""
    from datetime import date

    from django.db import connection

    from catalog.search import ImageFilters

    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    some = loaded.image_ids[:SCALED_GRAPH_MIN_ROWS].tolist()
    with transaction.atomic():
        with connection.cursor() as cursor:  # the triggers copy both into the embeddings
            cursor.execute("UPDATE catalog_image SET city = %s, taken_at = '0500-06-01T12:00:00Z' "
                           "WHERE id = ANY(%s)", ["100% Beach", some])
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks would block CREATE INDEX
        changes = spaces.refresh_filter_graphs(name=loaded.space.name, min_rows=SCALED_GRAPH_MIN_ROWS)
        built = {(c.column, c.value) for c in changes if c.action == "built"}
        assert {("city", "100% Beach"), ("year", "0500")} <= built
        vector_search.forget_space(loaded.space.pk)
        for filters, graph in ((ImageFilters(cities=("100% Beach",)), "city=100% Beach"),
                               (ImageFilters(taken_from=date(400, 1, 1), taken_to=date(600, 1, 1)), "year=0500")):
            plan = plan_for(space=loaded.space, image_filter=filters.embedding_q())
            assert [part.graph for part in plan.parts if part.graph] == [graph], plan
            found = nearest(space=loaded.space, vector=loaded.queries[0], image_filter=filters.embedding_q(),
                            offset=0, limit=20)
            assert len(found) == 20 and {n.image_id for n in found} <= set(some)
        transaction.set_rollback(True)
    vector_search.forget_space(loaded.space.pk)


def _utc(year: int, month: int = 1) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC)


def test_year_blocks_are_aligned_and_have_rows_in_both_halves(monkeypatch):
    monkeypatch.setattr(vector_search, "YEAR_BLOCKS", (4,))
    # 2016-2019 only: the other blocks have an empty half (each half needs a quarter of the block's rows).
    assert spaces._year_block_counts({2015: 5, 2016: 7, 2017: 1, 2018: 1, 2019: 2, 2021: 3}) == {("year", "2016-2019"): 11}
    # A block that is mostly one half would be a second graph of nearly that half's rows.
    assert spaces._year_block_counts({2016: 1, 2019: 300}) == {}
    # Four-digit years from 1 to 9998 (no block starts at 0; 9999 has no following year to bound it).
    assert spaces._year_block_counts({1: 4, 2: 4, 3: 4, 4: 2, 6: 2, 9996: 1, 9998: 1}) == {("year", "0004-0007"): 4}
    monkeypatch.setattr(vector_search, "YEAR_BLOCKS", (2, 4))
    assert spaces._year_block_counts({2015: 5, 2016: 4, 2017: 3, 2018: 2, 2019: 2}) == {
        ("year", "2016-2017"): 7, ("year", "2018-2019"): 4, ("year", "2016-2019"): 11}


@pytest.mark.parametrize("low, high, walks, rest", [
    # Whole years: the longest graph each stretch covers whole, from the range's start on.
    (_utc(2015), _utc(2020), ["2015 whole", "2016-2019 whole"], False),
    (None, _utc(2010), ["2008 whole", "2009 whole"], True),  # and the rows before 2008, which no graph holds
    (_utc(2024), None, ["2024 whole", "2025 whole"], True),
    (_utc(2016), _utc(2026), ["2016-2019 whole", "2020-2023 whole", "2024 whole", "2025 whole"], False),
    # A part of a year: the shortest graph that holds it, its rows counted there.
    (_utc(2015, 6), _utc(2019, 3), ["2015 part", "2016 whole", "2017 whole", "2018 whole", "2019 part"], False),
    # No graph holds 2013 (say its block is past GRAPH_MAX_SHARE): the rest ranks it.
    (_utc(2012), _utc(2016), ["2012 whole", "2014 whole", "2015 whole"], True),
    (_utc(2008), _utc(2026), ["2008-2011 whole", "2012 whole", "2014 whole", "2015 whole", "2016-2019 whole",
                              "2020-2023 whole", "2024 whole", "2025 whole"], True),
    (_utc(1990), _utc(2000), None, None),
])
def test_a_range_of_years_is_split_over_the_fewest_year_graphs(monkeypatch, low, high, walks, rest):
    monkeypatch.setattr(vector_search, "YEAR_BLOCKS", (4,))
    by_year = {year: 10_000 for year in range(2008, 2026)}
    graphs = {("year", f"{year}"): rows for year, rows in by_year.items()}
    graphs.update(spaces._year_block_counts(by_year))
    graphs = {key: rows for key, rows in graphs.items() if key[1] not in ("2013", "2012-2015")}
    bounds = {key: value for key, value in (("taken_at__gte", low), ("taken_at__lt", high)) if value is not None}
    split = vector_search._split(Q(**bounds), graphs)
    if walks is None:
        assert split is None
        return
    assert [f"{label.removeprefix('year=')} {'whole' if whole else 'part'}"
            for label, _, _, whole in split.graph_parts] == walks
    assert (split.rest is not None) == rest
    # Without a rest, the parts hold every row of the range once: their bounds tile it.
    pieces = sorted((dict(part.children)["taken_at__gte"], dict(part.children)["taken_at__lt"])
                    for _, _, part, _ in split.graph_parts)
    if not rest:
        assert pieces[0][0] == low and pieces[-1][1] == high, pieces
        assert all(a[1] == b[0] for a, b in pairwise(pieces)), pieces


def test_a_year_graphs_value_is_a_year_or_a_block_of_years():
    from django.db import IntegrityError

    space = EmbeddingSpace.objects.create(name="test/year-values", dimensions=8)
    for value in ("2016", "2016-2019"):
        FilterGraph.objects.create(space=space, column="year", value=value, rows=1)
    for value in ("2016-19", "2016-", "16-2019", "2016 2019"):
        with pytest.raises(IntegrityError), transaction.atomic():
            FilterGraph.objects.create(space=space, column="year", value=value, rows=1)


def _counts_sent(loaded, case, q: int) -> tuple[int, list[int]]:
    from django.db import connection

    sent = []

    def note(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(note):
        found = loaded.search(case, q, limit=30)
    return sum("count(" in sql.lower() for sql in sent), [n.image_id for n in found]


def test_a_count_that_reached_its_cap_is_not_repeated_for_a_while(loaded, value_graphs, monkeypatch):
    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    vector_search.forget_space(loaded.space.pk)
    walked = [case for case in loaded.cases if any(part.graph and part.matching is not None for part in
                                                   plan_for(space=loaded.space, image_filter=case.filters.embedding_q()).parts)]
    assert walked
    for case in walked:
        vector_search.forget_space(loaded.space.pk)
        first, found = _counts_sent(loaded, case, 0)
        again, found_again = _counts_sent(loaded, case, 0)
        assert first > again and found_again == found, case.label
    monkeypatch.setattr(vector_search, "KNOWN_TTL", -1)  # past its time: counted again
    assert _counts_sent(loaded, case, 0)[0] == first


def test_a_count_below_its_cap_is_made_again_so_new_matches_are_found(loaded, value_graphs, monkeypatch):
    """A part ranked exactly by the ids it counted: an image that matches since the last search (a
    city corrected) is found by the next one."""
    from django.db import connection

    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    case = next(c for c in loaded.cases if "its camera size" in c.label)
    plan = plan_for(space=loaded.space, image_filter=case.filters.embedding_q())
    assert any(part.exact and part.image_ids for part in plan.parts), plan
    filters, collection = case.filters, loaded.collection
    outside = np.flatnonzero((collection.width == filters.min_width) & (collection.height == filters.min_height)
                             & ~case.mask & (collection.city != ""))
    image_id = int(loaded.image_ids[outside[0]])
    query = collection.vectors[outside[0]]
    search = lambda: nearest(space=loaded.space, vector=query, image_filter=filters.embedding_q(), offset=0, limit=10)
    assert image_id not in [n.image_id for n in search()]
    search()  # counted again: nothing kept of a count below its cap
    with connection.cursor() as cursor:  # the triggers copy the city into the embedding
        cursor.execute("UPDATE catalog_image SET city = %s WHERE id = %s", [filters.cities[0], image_id])
    assert search()[0].image_id == image_id


def test_a_kept_count_is_made_again_after_its_time_however_often_its_filter_is_searched(loaded, monkeypatch):
    from django.db import connection

    from catalog.search import ImageFilters

    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    monkeypatch.setattr(vector_search, "_graphs_of", lambda space, using: {})
    # Two columns, so counted (never walked on the planner's word), past the exact limit: walked.
    cities, rows = np.unique(loaded.collection.city[loaded.collection.city != ""], return_counts=True)
    image_filter = ImageFilters(cities=(str(cities[np.argmax(rows)]),), min_width=1).embedding_q()
    plan = plan_for(space=loaded.space, image_filter=image_filter)
    assert not plan.exact and plan.matching, plan
    clock = [1_000.0]
    monkeypatch.setattr(vector_search, "_now", lambda: clock[0])
    vector_search.forget_space(loaded.space.pk)
    counts = []
    sent = []
    for _ in range(4):  # searched every 0.6 KNOWN_TTL: kept, then counted again as its first count expires
        sent.clear()
        with connection.execute_wrapper(lambda execute, sql, *args: sent.append(sql) or execute(sql, *args)):
            nearest(space=loaded.space, vector=loaded.queries[0], image_filter=image_filter, offset=0, limit=10)
        counts.append(sum("count(" in sql.lower() for sql in sent))
        clock[0] += 0.6 * vector_search.KNOWN_TTL
    assert counts[0] > 0 and counts[1] == 0 and counts[2] == counts[0] and counts[3] == 0, counts


def test_a_count_sends_its_ids_only_below_its_cap(loaded):
    """At the cap the part is walked, so the ids are not written out and sent."""
    case = next(c for c in loaded.cases if c.label.startswith("orientation square"))
    matched = Embedding.objects.filter(space=loaded.space).filter(case.filters.embedding_q())
    rows = int(case.mask.sum())
    assert vector_search._matching_ids(matched, rows - 1, "default") == (rows - 1, None)
    count, ids = vector_search._matching_ids(matched, rows + 1, "default")
    assert count == rows and sorted(map(int, ids.strip("{}").split(","))) == sorted(
        image_ids_of(np.flatnonzero(case.mask), loaded.image_ids))


def test_a_filter_on_several_columns_past_the_exact_limit_is_counted_once(loaded, monkeypatch):
    """Its count gathers ids up to the limit (below IDS_MAX_ROWS), and at the limit it is walked."""
    for name, value in {"EXACT_MIN_ROWS": 200, "EXACT_SHARE": 0.01, "EXACT_MAX_ROWS": 8000}.items():
        monkeypatch.setattr(vector_search, name, value)
    monkeypatch.setattr(vector_search, "_graphs_of", lambda space, using: {})
    vector_search.forget_space(loaded.space.pk)
    walked = [case for case in loaded.cases if len(vector_search._columns(case.filters.embedding_q())) > 1
              and not plan_for(space=loaded.space, image_filter=case.filters.embedding_q()).exact]
    assert walked
    for case in walked:
        vector_search.forget_counts()
        assert _counts_sent(loaded, case, 0)[0] == 1, case.label


def test_value_graphs_are_refreshed_once_their_space_changed_by_a_tenth(loaded, value_graphs):
    space = EmbeddingSpace.objects.get(pk=loaded.space.pk)
    assert (space.graphs_min_rows, space.graphs_refreshed_rows) == (SCALED_GRAPH_MIN_ROWS, ROWS)  # recorded
    asked = EmbeddingSpace.objects.filter(pk=space.pk)
    largest = max(c.rows for c in value_graphs)
    with transaction.atomic():  # rolled back: the other tests keep the graphs
        assert space.state == EmbeddingSpace.State.RETIRED  # as loaded: searched by nobody, so never refreshed
        asked.update(graphs_refreshed_rows=round(ROWS / 1.12))
        assert spaces.refresh_due_graphs() == {}
        asked.update(state=EmbeddingSpace.State.BUILDING, graphs_refreshed_rows=round(ROWS / 1.05))
        assert spaces.refresh_due_graphs() == {}  # 5% more rows since: not yet
        asked.update(graphs_refreshed_rows=round(ROWS / 1.12))  # 12% more: refreshed
        refreshed = spaces.refresh_due_graphs()
        assert list(refreshed) == [space.name] and {c.action for c in refreshed[space.name]} == {"kept"}
        assert asked.get().graphs_refreshed_rows == ROWS
        assert spaces.refresh_due_graphs() == {}  # current again
        # Asked for on an empty space, at a --min-rows no value reaches: refreshed with it, all go.
        asked.update(graphs_refreshed_rows=0, graphs_min_rows=4 * largest)
        assert {c.action for c in spaces.refresh_due_graphs()[space.name]} == {"dropped"}
        assert not FilterGraph.objects.filter(space=space).exists()
        transaction.set_rollback(True)
    vector_search.forget_space(space.pk)
