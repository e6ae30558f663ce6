"""Nearest embeddings with metadata filters: exact wherever the graph walk cannot be trusted.

pgvector applies a WHERE clause while it walks the HNSW graph, and on real collections the filter
correlates with the vectors (a trip's photos are close together *and* share a city): a walk that
starts near the query can pass thousands of rows before it reaches the matching ones, and then
misses some of them (held-out harness: recall 0.57-0.79 for 2-4% city filters at any ef_search).
So ``nearest`` *counts* the matching rows first (a capped count through the btree indexes of the
embedding table, which carries copies of the filter columns, see ``Embedding``) and picks:

* **exact** when at most ``exact_limit(space size)`` rows match: their distances are computed and
  sorted in the database (``ORDER BY distance, image_id``). The vectors are half precision and
  stored in the row, so this reads no TOAST.
* **hnsw** otherwise: an iterative index scan (``hnsw.iterative_scan = strict_order``) that returns
  rows in ascending distance order, ``hnsw.ef_search`` growing as the filter narrows. If the walk
  gives up (``hnsw.max_scan_tuples``) before the page is full, the whole filter is ranked exactly
  instead (the walk's rows are a subset of it), so results are always in true distance order.

Vectors are unit length (a constraint on Embedding), so the distance is ``1 - inner product``: the
HNSW index (``halfvec_ip_ops``) then orders rows by the very values the query returns, where the
cosine operator class would re-normalise inside the index and disagree with them by ~1e-6.

Whatever the plan, rows come in ascending (distance, image id) order and a page is a slice of one
ranking read from its start: the plan and its settings depend on the space and the filter only,
never on the page, so page n+1 continues page n exactly, and ``max_distance`` cuts that ranking.
Pages go ``MAX_DEPTH`` rows deep at most (catalog/search.py refuses deeper ones).

Thresholds and index parameters: bench/search_db.py on clustered data with correlated metadata,
figures in bench/README.md.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from django.db import connections, transaction
from django.db.models import Q, QuerySet, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast
from pgvector import HalfVector
from pgvector.django import HalfVectorField, MaxInnerProduct

from catalog.models import Embedding, EmbeddingSpace

logger = logging.getLogger(__name__)

# Exact ranking costs ~1.2 us a matching row on one core (20,000 rows: 26 ms). The graph walk is
# trusted only for filters matching more than 30% of the space: at 1,000,000 clustered images a
# 3.6% city filter walked with ef_search 1,000 found 0.84 of the true top 100, a 13-24% date range
# 0.69-0.76 of the top 10, while filters of 31% and more kept >= 0.99 (bench/README.md).
EXACT_MIN_ROWS = 20_000
EXACT_SHARE = 0.30
EXACT_MAX_ROWS = 400_000
IDS_MAX_ROWS = 30_000  # a filter on several columns is ranked by the ids it matched, up to this many
# Unfiltered walks, by how the space's graph was built (1,000,000 clustered images, 50 queries, one
# run, bench/README.md): at ef_construction 128, recall@10 0.974 up to ef_search 700 (one query aims at
# a tight trip that the walk reaches only from 800 on: recall 0 there) and 0.994 at 800; at 256
# (EmbeddingSpace.HNSW_EF_CONSTRUCTION since 2026-11-26), 0.996 from ef_search 200 (300: a margin).
EF_SEARCH_UNFILTERED = 800          # a graph built with ef_construction < DENSE_EF_CONSTRUCTION
EF_SEARCH_UNFILTERED_DENSE = 300
DENSE_EF_CONSTRUCTION = 256
EF_SEARCH_FILTERED = 800  # at selectivity 1 (never below the sparse graph's walk); grows as the filter narrows
EF_SEARCH_MAX = 1_000
MAX_SCAN_TUPLES = 20_000  # pgvector's default, set explicitly so the ranking does not depend on the server
MAX_DEPTH = 300           # rows of one ranking a page may reach (offset + limit); at 500 a graph walk kept 0.93-0.95
PARALLEL_MIN_ROWS = 15_000  # an exact scan this large is worth two workers' start-up
SPACE_SIZE_TTL = 60.0     # seconds a process trusts its estimate of a space's size (and how its graph was built)

_space_sizes: dict[tuple[str, int], tuple[float, int]] = {}
_graph_builds: dict[tuple[str, int], tuple[float, int]] = {}  # (using, space): (when, ef_construction)


@dataclass(frozen=True)
class Neighbour:
    image_id: int
    distance: float  # 1 - inner product = cosine distance of unit vectors, 0..2; score = 1 - distance


@dataclass(frozen=True)
class Plan:
    exact: bool
    matching: int | None       # rows counted (at most exact_limit + 1); None: not counted
    ef_search: int = 0
    image_ids: list[int] | None = field(default=None, repr=False)  # the matching rows, when counted by id

    def __str__(self) -> str:
        return "exact" if self.exact else f"hnsw ef_search={self.ef_search}"


def exact_limit(space_size: int) -> int:
    """The most matching rows ranked exactly: grows with the collection, bounded by its cost."""
    return min(EXACT_MAX_ROWS, max(EXACT_MIN_ROWS, round(EXACT_SHARE * space_size)))


def plan_for(*, space: EmbeddingSpace, image_filter: Q, using: str = "default") -> Plan:
    """How ``nearest`` searches this space with this filter (see the module docstring)."""
    size = _space_size(space, using)
    limit = exact_limit(size)
    if size <= limit:  # a small collection is ranked exactly, filter or not: nothing to count
        return Plan(exact=True, matching=None)
    if not image_filter:
        return Plan(exact=False, matching=None, ef_search=unfiltered_ef_search(space, using))
    matched = Embedding.objects.using(using).filter(space=space).filter(image_filter)
    ids = None
    if len(_columns(image_filter)) > 1:
        # Several columns (correlated, misestimated): the count reads one covering index and keeps the
        # ids, so the ranking reads only the rows that match instead of all those one bound matches.
        ids = list(matched.values_list("image_id", flat=True)[:min(limit, IDS_MAX_ROWS) + 1])
        if len(ids) > min(limit, IDS_MAX_ROWS):
            ids = None
    # One column, or too many ids to pass around: its index finds the rows.
    matching = len(ids) if ids is not None else matched.values("pk")[:limit + 1].count()
    if matching <= limit:
        return Plan(exact=True, matching=matching, image_ids=ids)
    # More than ``limit`` match: the planner's estimate, never below what was counted, sizes ef_search.
    # Correlated filters need a wide candidate list: on clustered data a date range takes whole trips
    # or none (7-14% of 20,000: recall@10 0.944 at ef_search 400, 0.969-0.981 at 1,000; 29% of
    # 100,000: recall@100 0.945 at 575), broad ones less.
    selectivity = min(1.0, max(matching, _estimated_rows(matched)) / max(size, 1))
    ef_search = round(min(EF_SEARCH_MAX, EF_SEARCH_FILTERED / selectivity ** 0.75))
    return Plan(exact=False, matching=matching, ef_search=ef_search)


def nearest(*, space: EmbeddingSpace, vector, image_filter: Q, offset: int, limit: int,
            max_distance: float | None = None, collapse_groups: bool = False,
            exclude_image_id: int | None = None, using: str = "default") -> list[Neighbour]:
    """Rows [offset, offset + limit) of the images closest to ``vector`` among the embeddings
    matching ``image_filter`` (a Q over Embedding's columns), at most one per group with
    ``collapse_groups``, none farther than ``max_distance`` and never ``exclude_image_id``."""
    if limit <= 0:
        return []
    if offset + limit > MAX_DEPTH + 1:  # +1: the caller's "is there a next page" row
        raise ValueError(f"nearest() ranks {MAX_DEPTH} rows deep at most")
    vector = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(vector)
    if not (np.isfinite(norm) and norm > 1e-6):
        raise ValueError("the query vector must be finite and not zero")
    vector = (vector / norm).astype(np.float32)  # unit, like every stored vector
    query = Cast(Value(HalfVector(vector).to_text()), HalfVectorField(dimensions=space.dimensions))
    matched = Embedding.objects.using(using).filter(space=space).filter(image_filter)
    if exclude_image_id is not None:
        matched = matched.exclude(image_id=exclude_image_id)
    page = _Page(wanted=offset + limit, max_distance=max_distance, collapse_groups=collapse_groups)
    with transaction.atomic(using=using):
        plan = plan_for(space=space, image_filter=image_filter, using=using)
        if plan.exact:
            if plan.image_ids is not None:
                matched = matched.filter(image_id__in=RawSQL("SELECT unnest(%s::bigint[])", [plan.image_ids]))
            _read(page, _exact(matched, query, page, using, parallel=(plan.matching or 0) >= PARALLEL_MIN_ROWS))
        else:
            ran_out = _read(page, _hnsw(matched, query, space, plan, page, using))
            if ran_out and not page.full:
                # The walk gave up: rank every matching row exactly (the walk's rows among them).
                logger.debug("HNSW scan ran out after %d rows; ranking the filter exactly", len(page.rows))
                page.restart()
                _read(page, _exact(matched, query, page, using, parallel=True))
        # Read-only work: rolling back drops the SET LOCALs even when the caller's transaction goes on.
        transaction.set_rollback(True, using=using)
    return page.rows[offset:]


class _Page:
    """Collects the ranking's rows from its start until ``wanted`` rows are in."""

    def __init__(self, *, wanted: int, max_distance: float | None, collapse_groups: bool):
        self.wanted, self.max_distance, self.collapse_groups = wanted, max_distance, collapse_groups
        self.restart()

    def restart(self) -> None:
        self.rows: list[Neighbour] = []
        self.seen_groups: set = set()

    @property
    def fields(self) -> tuple[str, ...]:
        return ("image_id", "distance", "group_key") if self.collapse_groups else ("image_id", "distance")

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.wanted

    def take(self, ranked) -> bool:
        """Consume rows in rank order; True when ``ranked`` ran out before the page was full."""
        for image_id, negative_product, *group in ranked:
            distance = 1.0 + float(negative_product)
            if self.max_distance is not None and distance > self.max_distance:
                return False  # ascending order: nothing closer follows
            if self.collapse_groups:
                key = group[0] or image_id  # an empty group_key is a group of its own
                if key in self.seen_groups:
                    continue
                self.seen_groups.add(key)
            self.rows.append(Neighbour(image_id=image_id, distance=distance))
            if self.full:
                return False
        return True


def _read(page: _Page, ranked) -> bool:
    try:
        return page.take(ranked)
    finally:
        getattr(ranked, "close", lambda: None)()  # a server-side cursor closes inside the transaction


def _ranked(matched: QuerySet, distance, page: _Page):
    ranked = matched.annotate(distance=distance).order_by("distance", "image_id").values_list(*page.fields)
    if not page.collapse_groups:
        return iter(ranked[:page.wanted])  # one round trip
    # Collapsing needs an unknown depth: a server-side cursor reads only as deep as rows are taken.
    return ranked.iterator(chunk_size=4 * page.wanted)


def _exact(matched: QuerySet, query, page: _Page, using: str, *, parallel: bool):
    # The bare column is not the index expression (``vector::halfvec(n)``), so no HNSW here: the
    # planner scans the filter's rows, computes their distances and keeps the top rows.
    _set_local(using, max_parallel_workers_per_gather=2 if parallel else 0, jit="off")
    return _ranked(matched, MaxInnerProduct("vector", query), page)


def _hnsw(matched: QuerySet, query, space: EmbeddingSpace, plan: Plan, page: _Page, using: str):
    _set_local(using, **{"hnsw.iterative_scan": "strict_order", "hnsw.ef_search": plan.ef_search,
                         "hnsw.max_scan_tuples": MAX_SCAN_TUPLES,
                         # The index order is the only sort-free plan; without this a large ef_search
                         # makes the planner prefer an exact sort of the whole space.
                         "enable_sort": "off",
                         # Without a LIMIT (collapsing) a filtered scan is costed over jit_above_cost:
                         # JIT compiling added 150 ms to a 21 ms query.
                         "jit": "off"})
    # Ordered by distance alone: the index yields that order; ties are rare and break by scan order.
    ranked = (matched.annotate(distance=MaxInnerProduct(space.typed_vector(), query))
              .order_by("distance").values_list(*page.fields))
    if not page.collapse_groups:
        return iter(ranked[:page.wanted])
    return ranked.iterator(chunk_size=4 * page.wanted)


def _columns(image_filter: Q) -> set[str]:
    """The columns a filter's conditions name (``width__gte`` -> ``width``)."""
    columns = set()
    for child in image_filter.children:
        if isinstance(child, Q):
            columns |= _columns(child)
        else:
            columns.add(child[0].split("__")[0])
    return columns


def unfiltered_ef_search(space: EmbeddingSpace, using: str = "default") -> int:
    """The unfiltered walk's width for the graph this space's index was built as (``manage.py models
    reindex`` rebuilds an older one with the current parameters)."""
    def built_with() -> int:
        parameters = space.graph_parameters(using=using)
        return parameters[1] if parameters else 0

    ef_construction = _cached(_graph_builds, (using, space.pk), built_with)
    return EF_SEARCH_UNFILTERED_DENSE if ef_construction >= DENSE_EF_CONSTRUCTION else EF_SEARCH_UNFILTERED


def _space_size(space: EmbeddingSpace, using: str) -> int:
    """The space's rows, refreshed every SPACE_SIZE_TTL seconds: the planner's estimate, or where it
    says the space is small, a count (capped past the smallest exact limit): a freshly filled space
    has a stale estimate (17 rows for 100,000 until ANALYZE), which would rank it all exactly."""
    def measured() -> int:
        in_space = Embedding.objects.using(using).filter(space=space)
        size = _estimated_rows(in_space)
        if size <= exact_limit(size):
            size = max(size, in_space.values("pk")[:exact_limit(0) + 1].count())
        return size

    return _cached(_space_sizes, (using, space.pk), measured)


def _cached(store: dict, key, compute) -> int:
    """``compute()``, kept in ``store`` for SPACE_SIZE_TTL seconds per key."""
    now = time.monotonic()
    cached = store.get(key)
    if cached is None or now - cached[0] > SPACE_SIZE_TTL:
        cached = store[key] = (now, compute())
    return cached[1]


def _estimated_rows(queryset: QuerySet) -> int:
    plan = json.loads(queryset.explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def _set_local(using: str, **settings) -> None:
    """``SET LOCAL`` several settings in one round trip."""
    names, values = zip(*((name, str(value)) for name, value in settings.items()))
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT set_config(name, value, true) FROM unnest(%s::text[], %s::text[]) AS s(name, value)",
                       [list(names), list(values)])


def refresh_planner_statistics(using: str = "default") -> None:
    """VACUUM ANALYZE the embeddings after a bulk load, so that estimates are current and counts
    read the covering indexes only (the visibility map), before autovacuum catches up."""
    _space_sizes.clear()
    _graph_builds.clear()
    connection = connections[using]
    with connection.cursor() as cursor:
        # VACUUM cannot run inside a transaction block; ANALYZE alone still helps there.
        cursor.execute("ANALYZE catalog_embedding" if connection.in_atomic_block else "VACUUM ANALYZE catalog_embedding")
