"""Nearest embeddings with metadata filters, exact where it is cheap and HNSW where it is not.

pgvector applies a WHERE clause *after* the HNSW index has produced its ``hnsw.ef_search``
candidates, so a plain ``ORDER BY distance LIMIT k`` with a filter matching 10% of the rows
returns about 4 of 40. ``nearest`` picks one of two plans per (space, filter):

* **exact**, when the planner estimates at most ``EXACT_MAX_ROWS`` matching embeddings: the
  matching rows' distances are computed in the database without an ORDER BY (so the planner
  filters first, instead of sorting every vector of the space by distance and filtering
  afterwards, which it prefers for ``ORDER BY .. LIMIT`` and which measured 160-260 ms), then
  sorted by (distance, image id) here.
* **hnsw**, otherwise: an iterative index scan (pgvector >= 0.8, ``hnsw.iterative_scan =
  strict_order``) that keeps walking the graph until enough rows pass the filter, and returns
  them in ascending distance order. ``hnsw.ef_search`` grows as the filter gets more selective,
  because the filtered top-k sits deeper in the unfiltered ranking:
  ``ef_search = min(EF_SEARCH_MAX, EF_SEARCH_UNFILTERED / sqrt(selectivity))``.
  If the scan runs out (``hnsw.max_scan_tuples``) before the page is full, the rows it never
  reached are ranked exactly and appended, so a page is always full when enough rows match.

Pages are stable: the plan, ``ef_search`` and the other settings depend only on the space and
the filter (never on offset/limit), the scan order is then deterministic, and every page is a
slice of that one ranking (read from its start, so group collapsing and ``max_distance`` see the
same prefix on every page). Ties are broken by image id in the exact ranking.

Thresholds, measured with ``bench/search_db.py`` and ad-hoc variants of it: 100,000 x 512-d
unit vectors of intrinsic dimension 32 (uniformly random 512-d vectors defeat any graph index:
ef_search 400 finds ~30% of the true top 10), k = 10..100, a shared 2-core VM, PostgreSQL 18.

* Plan crossover (p50 ms, nearest() with the plan forced, filter on an unindexed column):

  ==============  =========  ==========  =========  =========
  matching rows   1% 1,000   2% 2,000    3% 3,000   5% 5,000
  ==============  =========  ==========  =========  =========
  128 MB buffers  37 vs 114  44 vs 61    49 vs 62   64 vs 63   (exact vs hnsw)
  1 GB buffers    34 vs 69   --          48 vs 32   63 vs 32
  ==============  =========  ==========  =========  =========

  Exact costs ~5-12 us per matching row (a 512-d vector is just over the TOAST threshold, so
  each one is detoasted) plus the filter (a sequential scan of catalog_image when no index serves
  it, ~7 ms at 100,000 images); the iterative scan's cost grows as the filter gets more selective.
  ``EXACT_MAX_ROWS`` = 3,000 sits between the crossovers (2-5%). It should grow about with the
  square root of the space's size; re-measure for collections far from 100,000.
* Recall@k against exact, strict_order, 20 queries: unfiltered, ef_search 100 gives 0.97 at
  k = 10 but 0.85 at k = 100, ef 200 gives 0.95-0.995 for k = 10..100; at 10% selectivity ef 200
  gives 0.93-0.96 and ef 400 0.97-0.995; at 3% ef 400 gives 0.96-0.98. Hence 200 unfiltered and
  400 from 25% down, sized for k up to 100 because the ranking must not depend on the page size.
  relaxed_order matched strict_order's recall at ef 400 (it is better at small ef, which these
  settings do not use); strict_order keeps the rows sorted, which makes pages plain slices.
* Latency (bench/search_db.py, k = 10, p50): unfiltered 16.6 ms with the embedded server's
  default 128 MB shared_buffers, where the 260 MB index is partly read from the OS cache, and
  10.4 ms with 1 GB; the executor alone needs ~2 ms at ef 100 and ~4.5 ms at ef 200 once the
  pages are in shared buffers. ef 100 would give 10.9 ms at 128 MB, but recall@100 0.85.
  ``nearest`` adds ~2-3 ms to the bare query (EXPLAIN, SET LOCAL, transaction round trips).

The planner's estimate drives the choice (one or two EXPLAINs, 0.35-0.7 ms; a capped count measured
8-34 ms for unindexed filters). A wrong estimate costs time, never rows: an underestimate makes
the exact scan larger, an overestimate makes the HNSW scan run out and fall back as above.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import Q, QuerySet
from pgvector.django import CosineDistance

from catalog.models import Embedding, EmbeddingSpace

logger = logging.getLogger(__name__)

EXACT_MAX_ROWS = 3_000
EF_SEARCH_UNFILTERED = 200
EF_SEARCH_MAX = 400
MAX_SCAN_TUPLES = 20_000  # pgvector's default, set explicitly so the ranking does not depend on the server


@dataclass(frozen=True)
class Neighbour:
    image_id: int
    distance: float  # cosine distance, 0..2; score = 1 - distance


@dataclass(frozen=True)
class Plan:
    exact: bool
    estimated_rows: int
    ef_search: int = 0

    def __str__(self) -> str:
        return "exact" if self.exact else f"hnsw ef_search={self.ef_search}"


def plan_for(*, space: EmbeddingSpace, image_filter: Q) -> Plan:
    """How ``nearest`` will search this space with this filter (see the module docstring)."""
    estimated = _estimated_rows(Embedding.objects.filter(space=space).filter(image_filter))
    if estimated <= EXACT_MAX_ROWS:
        return Plan(exact=True, estimated_rows=estimated)
    in_space = estimated if not image_filter else _estimated_rows(Embedding.objects.filter(space=space))
    selectivity = min(1.0, estimated / max(in_space, 1))
    ef_search = round(min(EF_SEARCH_MAX, EF_SEARCH_UNFILTERED / math.sqrt(selectivity)))
    return Plan(exact=False, estimated_rows=estimated, ef_search=ef_search)


def nearest(*, space: EmbeddingSpace, vector, image_filter: Q, offset: int, limit: int,
            max_distance: float | None = None, collapse_groups: bool = False) -> list[Neighbour]:
    """Rows [offset, offset + limit) of the images closest to ``vector`` among those matching
    ``image_filter`` (a Q over ``image__`` fields), at most one per group with ``collapse_groups``
    and none farther than ``max_distance``."""
    if limit <= 0:
        return []
    matched = Embedding.objects.filter(space=space).filter(image_filter)
    page = _Page(wanted=offset + limit, max_distance=max_distance, collapse_groups=collapse_groups)
    with transaction.atomic():
        plan = plan_for(space=space, image_filter=image_filter)
        if plan.exact:
            page.take(_exact(matched, vector, page))
        else:
            ranked = _hnsw(matched, vector, space, plan, page)
            try:
                exhausted = page.take(ranked)
            finally:
                getattr(ranked, "close", lambda: None)()  # a server-side cursor closes in the transaction
            if exhausted and not page.full:
                logger.debug("HNSW scan ran out after %d rows; ranking the rest exactly", len(page.seen_ids))
                page.take(_exact(matched.exclude(image_id__in=page.seen_ids), vector, page))
        # Read-only work: rolling back drops the SET LOCALs even when the caller's transaction goes on.
        transaction.set_rollback(True)
    return page.rows[offset:]


class _Page:
    """Collects the ranking's rows from its start until ``wanted`` rows are in."""

    def __init__(self, *, wanted: int, max_distance: float | None, collapse_groups: bool):
        self.wanted, self.max_distance, self.collapse_groups = wanted, max_distance, collapse_groups
        self.rows: list[Neighbour] = []
        self.seen_ids: list[int] = []
        self.seen_groups: set = set()

    @property
    def fields(self) -> tuple[str, ...]:
        return ("image_id", "distance", "image__group_key") if self.collapse_groups else ("image_id", "distance")

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.wanted

    def take(self, ranked) -> bool:
        """Consume rows in rank order; True when ``ranked`` ran out before the page was full."""
        for image_id, distance, *group in ranked:
            if self.max_distance is not None and distance > self.max_distance:
                return False  # ascending order: nothing closer follows
            self.seen_ids.append(image_id)
            if self.collapse_groups:
                key = group[0] or image_id  # an empty group_key is a group of its own
                if key in self.seen_groups:
                    continue
                self.seen_groups.add(key)
            self.rows.append(Neighbour(image_id=image_id, distance=float(distance)))
            if self.full:
                return False
        return True


def _exact(matched: QuerySet, vector, page: _Page) -> list[tuple]:
    # The bare column is not the index expression (``vector::vector(n)``), so no HNSW here; and no
    # ORDER BY, so the planner filters before computing distances (see the module docstring).
    rows = matched.annotate(distance=CosineDistance("vector", vector))
    if page.max_distance is not None:
        rows = rows.filter(distance__lte=page.max_distance)
    # random_page_cost: everything is in RAM or on SSD; with the default 4.0 the planner hash-joins
    # every embedding of the space instead of looking up the filtered images' ones (1% city filter:
    # 14 -> 7 ms). Parallel workers take longer to start than they save on a few thousand rows
    # (1% width filter: 17 -> 13 ms). jit: see _hnsw.
    _set_local(random_page_cost=1.1, max_parallel_workers_per_gather=0, jit="off")
    return sorted(rows.values_list(*page.fields), key=lambda row: (row[1], row[0]))


def _hnsw(matched: QuerySet, vector, space: EmbeddingSpace, plan: Plan, page: _Page):
    _set_local(**{"hnsw.iterative_scan": "strict_order", "hnsw.ef_search": plan.ef_search,
                  "hnsw.max_scan_tuples": MAX_SCAN_TUPLES,
                  # The index order is the only sort-free plan; without this a large ef_search makes
                  # the planner prefer an exact sort of the whole space (measured 130-175 ms).
                  "enable_sort": "off",
                  # Without a LIMIT (collapsing) a filtered scan is costed at ~190,000, over
                  # jit_above_cost: JIT compiling added 150 ms to a 21 ms query.
                  "jit": "off"})
    ranked = (matched.annotate(distance=CosineDistance(space.typed_vector(), vector))
              .order_by("distance").values_list(*page.fields))
    if not page.collapse_groups:
        return iter(ranked[:page.wanted])  # one round trip; the iterator's cursor costs two more
    # Collapsing needs an unknown depth: a server-side cursor scans only as deep as rows are taken.
    return ranked.iterator(chunk_size=4 * page.wanted)


def _estimated_rows(queryset: QuerySet) -> int:
    plan = json.loads(queryset.explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def _set_local(**settings) -> None:
    """``SET LOCAL`` several settings in one round trip."""
    names, values = zip(*((name, str(value)) for name, value in settings.items()))
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config(name, value, true) FROM unnest(%s::text[], %s::text[]) AS s(name, value)",
                       [list(names), list(values)])


def refresh_planner_statistics() -> None:
    """ANALYZE the embeddings after a bulk load. ``plan_for`` trusts the planner's row estimates;
    until autovacuum catches up, a freshly filled space looks small and gets the exact plan
    (bench/search_api.py: 335 ms instead of 10 ms at 100,000 vectors)."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE catalog_embedding")
