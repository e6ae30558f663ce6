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

With value graphs (``FilterGraph``) a filter is split into parts, one per graph it covers plus the
rest, each ranked as above and merged in (distance, image id) order. The parts are ranked side by
side on up to ``settings.SEARCH_PARALLEL`` connections (``_side_by_side``), and a graph's part with
more conditions is counted while its walk already runs: the walk is kept or dropped by the count.
A range of years walks the fewest year graphs that tile it (years, and aligned blocks of 4 years).
A count that reached its cap (a walk) and the planner's estimates are kept for a minute by the
process (``KNOWN_TTL``): the next searches with that filter go straight to the walk.

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

import heapq
import itertools
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from django.conf import settings
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.models import BooleanField, Q, QuerySet, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast
from pgvector import HalfVector
from pgvector.django import HalfVectorField, MaxInnerProduct

from catalog.models import Embedding, EmbeddingSpace, FilterGraph, year_bounds, year_span

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
# A filter on one column whose estimate is past the exact limit is walked without counting: counting
# 300,000 matches took 60 ms of an 80 ms search (1,000,000 images). The planner's statistics of a
# single column (its most common values, its histogram) are within a few percent, and a walk is as
# good at 28% as at 31%; a correlated pair of columns is misestimated, so several are always counted.
ESTIMATE_MARGIN = 1.0
# Value graphs (FilterGraph, ``manage.py models graphs``): a city, orientation or year with at least
# GRAPH_MIN_ROWS rows (fewer are ranked exactly within ~50 ms) and at most GRAPH_MAX_SHARE of the space has
# its own graph, walked whole at EF_SEARCH_GRAPH, or with the rest of a filter that keeps at least
# GRAPH_SHARE of its rows, as the space's graph is. At 1,000,000 images a 10% city walked in its graph
# kept recall@100 0.98 from ef_search 300 (exact ranking: 148 ms; the space's graph: 0.91), but a year
# holds whole trips, so a query's nearest rows there lie in other trips: recall@100 0.86-0.94 at 300,
# 0.97-0.99 at 800 (bench/README.md).
GRAPH_MIN_ROWS = 15_000  # exact ranking of 20,000 scattered rows came to 47-52 ms at p95
GRAPH_MAX_SHARE = 0.5  # a value past it is most of its space: the space's graph serves it as well
GRAPH_SHARE = 0.30
EF_SEARCH_GRAPH = 800
# A year holds whole trips, so a query's nearest rows there lie in other trips, far from where a walk
# starts: year graphs are walked at the widest ef_search (1,000,000 images, 50 queries, recall@100 of
# a single year at 800 / 1,000: 2025 0.949 / 0.964, 2019 0.966 / 0.980, 2015 0.961 / 0.987).
EF_SEARCH_YEARS = EF_SEARCH_MAX
# Years also have graphs of aligned blocks of 4 years: a range of whole years then walks fewer graphs
# (2015-2019: 2015 and 2016-2019, where five year walks took 64-67 ms at p95 on 2 cores, side by side).
# A block walk finds less than its years' walks merged (fewer candidates in all): at 1,000,000 images,
# 2016-2019 at ef_search 1,000 kept recall@10 / @100 0.978 / 0.971 (50 queries; its four year graphs at
# 800: about 0.99). Blocks of 2 years cost as much recall (2008-2009: recall@1 0.95, 20 queries) for a
# walk that two connections already run side by side, so there are none (bench/README.md).
YEAR_BLOCKS = (4,)
HELPER_CONNECTION_MAX_AGE = 60.0  # seconds a helper keeps its connection at least
HELPER_LOCK_TIMEOUT = "100ms"  # a helper that cannot lock the table hands its part back (see _rank_alone)
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of lock_timeout
QUERY_CANCELED = "57014"
SPACE_SIZE_TTL = 60.0     # seconds a process trusts its estimate of a space's size (and how its graph was built)
# A filter's count that reached its cap (so the part is walked) is kept this long by the process, as
# are the planner's estimates: at 1,000,000 images counting Springfield's landscape photos 4,000 px
# wide up to 30% of its graph took 49 ms of a 62 ms search. A count below its cap is never kept (its
# ids must be current), and one that reached it only grows as images come: a kept one can be wrong
# only after deletions or edits (a city corrected), for KNOWN_TTL at most from its count, and then costs
# a walk that gives up (ranked exactly) or a little recall, never a row that does not match.
KNOWN_TTL = 60.0
KNOWN_MAX = 4_096         # filters a process keeps counts and estimates of (all dropped past it)

_space_sizes: dict[tuple[str, int], tuple[float, int]] = {}
_graph_builds: dict[tuple[str, int], tuple[float, int]] = {}  # (using, space): (when, ef_construction)
_value_graphs: dict[tuple[str, int], tuple[float, dict]] = {}  # (using, space): (when, {(column, value): rows})
_reached: dict[tuple, float] = {}  # (using, space, filter, cap): when a count reached cap
_estimates: dict[tuple, tuple[float, int]] = {}  # (using, space, filter): (when, the planner's estimate)


@dataclass(frozen=True)
class Neighbour:
    image_id: int
    distance: float  # 1 - inner product = cosine distance of unit vectors, 0..2; score = 1 - distance


@dataclass(frozen=True)
class Part:
    """One ranking a page merges: the rows of ``image_filter`` (within the filter searched), exact or
    walked in a graph (the space's, or the value graph ``graph``)."""
    image_filter: Q
    exact: bool
    matching: int | None = None  # rows counted (at most exact_limit + 1); None: not counted
    ef_search: int = 0
    graph: str = ""  # "city=London": the FilterGraph it walks; "": the space's graph
    # The matching rows' image ids when counted by id, as a PostgreSQL array literal ('{3,5,8}'): sent
    # back as one string, psycopg adapts it in 0.7 ms where a list of 2,779 ints took 4.5 ms.
    image_ids: str | None = field(default=None, repr=False)
    # Not counted yet: walked if at least this many rows match, else ranked exactly; ``nearest`` counts
    # them while the walk runs (plan_for(count_later=True)).
    walk_from: int | None = None

    def __str__(self) -> str:
        if self.exact:
            return "exact"
        return f"graph {self.graph} ef_search={self.ef_search}" if self.graph else f"hnsw ef_search={self.ef_search}"


@dataclass(frozen=True)
class Plan:
    parts: tuple[Part, ...]

    @property
    def exact(self) -> bool:
        return all(part.exact for part in self.parts)

    @property
    def matching(self) -> int | None:
        counted = [part.matching for part in self.parts]
        return None if None in counted else sum(counted)

    @property
    def ef_search(self) -> int:
        return max(part.ef_search for part in self.parts)

    def __str__(self) -> str:
        walks = [part for part in self.parts if part.graph]
        if len(walks) <= 1:
            return " + ".join(map(str, self.parts))
        rest = [str(part) for part in self.parts if not part.graph]
        widths = sorted({part.ef_search for part in walks})
        values = [part.graph.split("=", 1)[1] for part in walks]
        label = (f"{len(walks)} graphs {walks[0].graph.split('=')[0]}="
                 f"{', '.join(values) if len(values) <= 3 else values[0] + '..' + values[-1]} "
                 f"ef_search={'/'.join(map(str, widths))}")
        return " + ".join([label, *rest])


def exact_limit(space_size: int) -> int:
    """The most matching rows ranked exactly: grows with the collection, bounded by its cost."""
    return min(EXACT_MAX_ROWS, max(EXACT_MIN_ROWS, round(EXACT_SHARE * space_size)))


def plan_for(*, space: EmbeddingSpace, image_filter: Q, using: str = "default", count_later: bool = False) -> Plan:
    """How ``nearest`` searches this space with this filter (see the module docstring). With
    ``count_later``, a part of a value graph that the planner expects to be walked is left to be
    counted while its walk runs (``Part.walk_from``)."""
    size = _space_size(space, using)
    limit = exact_limit(size)
    if size <= limit:  # a small collection is ranked exactly, filter or not: nothing to count
        return Plan((Part(image_filter, exact=True),))
    if not image_filter:
        return Plan((Part(image_filter, exact=False, ef_search=unfiltered_ef_search(space, using)),))
    estimate = _single_column_estimate(space, image_filter, using)
    split = _split(image_filter, _graphs_of(space, using))
    if split is None or (estimate is not None and estimate > limit and len(split.graph_parts) > 1):
        # Past the limit a walk in the space's graph is as good, and one walk is cheaper than several.
        return Plan((_part(space, image_filter, size, limit, using, estimate=estimate),))
    parts = []
    for label, rows, part_filter, whole in split.graph_parts:
        if whole:  # the value's rows and no others: its graph alone, walked as an unfiltered space's
            parts.append(Part(part_filter, exact=False, graph=label,
                              ef_search=EF_SEARCH_YEARS if label.startswith("year=") else EF_SEARCH_GRAPH))
            continue
        share_limit = max(1, round(GRAPH_SHARE * rows))
        ef_search = round(min(EF_SEARCH_MAX, EF_SEARCH_GRAPH / GRAPH_SHARE ** 0.75))
        if _reached_lately((using, space.pk, part_filter, share_limit)):  # counted lately: walked
            parts.append(Part(part_filter, exact=False, matching=share_limit, ef_search=ef_search, graph=label))
            continue
        if count_later and _likely_walked(space, part_filter, share_limit, using):
            parts.append(Part(part_filter, exact=False, ef_search=ef_search, graph=label, walk_from=share_limit))
            continue
        matching, ids = _graph_share(space, part_filter, share_limit, using)
        if matching < share_limit:  # too few of the graph's rows: rank them exactly
            if matching:
                parts.append(Part(part_filter, exact=True, matching=matching, image_ids=ids))
            continue
        parts.append(Part(part_filter, exact=False, matching=matching, ef_search=ef_search, graph=label))
    if split.rest is not None:
        rest = _part(space, split.rest, size, limit, using)
        if rest.matching != 0:
            parts.append(rest)
    return Plan(tuple(parts) or (Part(image_filter, exact=True, matching=0),))


def _single_column_estimate(space: EmbeddingSpace, image_filter: Q, using: str) -> int | None:
    """The planner's estimate of a filter on one column (None for several: see ESTIMATE_MARGIN)."""
    columns = _columns(image_filter)
    if len(columns) != 1 or "image" in columns:
        return None
    return _estimate(space, image_filter, using)


def _estimate(space: EmbeddingSpace, image_filter: Q, using: str) -> int:
    """The planner's estimate of the rows ``image_filter`` matches in the space (kept KNOWN_TTL)."""
    return _cached(_estimates, (using, space.pk, image_filter),
                   lambda: _estimated_rows(_matched(space, image_filter, using)), ttl=KNOWN_TTL)


def _part(space: EmbeddingSpace, image_filter: Q, size: int, limit: int, using: str, *,
          estimate: int | None = None) -> Part:
    """The plan of a filter without value graphs: counted, then exact or walked in the space's graph."""
    matched = _matched(space, image_filter, using)
    columns = _columns(image_filter)
    if estimate is None:
        estimate = _single_column_estimate(space, image_filter, using)
    if estimate is not None and estimate > ESTIMATE_MARGIN * limit:  # past the limit: no need to count to it
        return Part(image_filter, exact=False, ef_search=_filtered_ef_search(estimate / max(size, 1)))
    matching = ids = None
    known = (using, space.pk, image_filter, limit + 1)
    if _reached_lately(known):  # counted lately: past the limit (kept from that count on, not renewed)
        matching = limit + 1
    else:
        if len(columns) > 1:
            # Several columns (correlated, misestimated): the count reads one covering index and keeps the
            # ids, so the ranking reads only the rows that match instead of all those one bound matches.
            matching, ids = _matching_ids(matched, min(limit, IDS_MAX_ROWS) + 1, using)
            if matching > IDS_MAX_ROWS and limit > IDS_MAX_ROWS:  # too many ids: counted on to the limit below
                matching = ids = None
        if matching is None:  # one column, or too many ids to pass around: its index finds the rows
            matching = matched.values("pk")[:limit + 1].count()
        if matching > limit:
            _note_reached(known)
    if matching <= limit:
        return Part(image_filter, exact=True, matching=matching, image_ids=ids)
    # More than ``limit`` match: the planner's estimate, never below what was counted, sizes ef_search.
    selectivity = min(1.0, max(matching, _estimate(space, image_filter, using)) / max(size, 1))
    return Part(image_filter, exact=False, matching=matching, ef_search=_filtered_ef_search(selectivity))


def _likely_walked(space: EmbeddingSpace, image_filter: Q, share_limit: int, using: str) -> bool:
    """Whether a graph's part is worth walking before it is counted. The estimate (of correlated
    columns: 25% low for a city and a date range) only picks what starts first: the count still
    decides, and a wrong guess costs at most one walk, never a row."""
    return _estimate(space, image_filter, using) >= share_limit / 2


def _graph_share(space: EmbeddingSpace, image_filter: Q, share_limit: int, using: str) -> tuple[int, str | None]:
    """How many of a part's rows match, up to ``share_limit``, with their ids where few enough to pass."""
    matched = _matched(space, image_filter, using)
    if share_limit <= IDS_MAX_ROWS:  # several columns: keep the ids, as _part does
        matching, ids = _matching_ids(matched, share_limit, using)
    else:
        matching, ids = matched.values("pk")[:share_limit].count(), None
    if matching >= share_limit:
        _note_reached((using, space.pk, image_filter, share_limit))
    return matching, ids


def _matching_ids(matched: QuerySet, cap: int, using: str) -> tuple[int, str | None]:
    """How many rows ``matched`` has (at most ``cap``), and their image ids as an array literal (None
    at the cap, where every caller walks instead: 19,000 ids written out and sent took 3-4 ms)."""
    sql, params = matched.values("image_id")[:cap].query.get_compiler(using).as_sql()
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT count(*), CASE WHEN count(*) < %s THEN coalesce(array_agg(image_id)::text, '{{}}') "
                       f"END FROM ({sql}) AS matched", [cap, *params])
        return cursor.fetchone()


def _filtered_ef_search(selectivity: float) -> int:
    # Correlated filters need a wide candidate list: on clustered data a date range takes whole trips
    # or none (7-14% of 20,000: recall@10 0.944 at ef_search 400, 0.969-0.981 at 1,000; 29% of
    # 100,000: recall@100 0.945 at 575), broad ones less.
    return round(min(EF_SEARCH_MAX, EF_SEARCH_FILTERED / max(selectivity, 1e-9) ** 0.75))


def _matched(space: EmbeddingSpace, image_filter: Q, using: str) -> QuerySet:
    return Embedding.objects.using(using).filter(space=space).filter(image_filter)


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
    in_space = Embedding.objects.using(using).filter(space=space)
    if exclude_image_id is not None:
        in_space = in_space.exclude(image_id=exclude_image_id)
    page = _Page(wanted=offset + limit, max_distance=max_distance, collapse_groups=collapse_groups)
    # Parts run side by side on their own connections, which see only committed rows: never for a
    # caller inside a transaction (its own writes), nor when collapsing (rows read as deep as needed).
    side_by_side = settings.SEARCH_PARALLEL > 1 and not (connections[using].in_atomic_block or collapse_groups)
    with transaction.atomic(using=using):
        parts = list(plan_for(space=space, image_filter=image_filter, using=using, count_later=side_by_side).parts)
        while True:
            if side_by_side and (len(parts) > 1 or parts[0].walk_from is not None):
                ranked = _side_by_side(parts, in_space, query, space, page, using)
            else:
                ranked = [_rank(part, in_space, query, space, page, using) for part in parts]
            streams = [_Stream(rows, walk=not part.exact) for part, rows in zip(parts, ranked)]
            page.restart()
            try:
                page.take(heapq.merge(*streams, key=_rank_key) if len(streams) > 1 else iter(streams[0]))
            finally:
                for stream in streams:
                    stream.close()
            # A walk that gave up (hnsw.max_scan_tuples) before its rows ran out: rank its rows exactly
            # instead (the walk's rows among them), so results are always in true distance order.
            gave_up = [i for i, stream in enumerate(streams) if stream.gave_up(page)]
            if not gave_up:
                break
            logger.debug("HNSW scan ran out in %d part(s); ranking them exactly", len(gave_up))
            for i in gave_up:
                parts[i] = Part(parts[i].image_filter, exact=True)
        # Read-only work: rolling back drops the SET LOCALs even when the caller's transaction goes on.
        transaction.set_rollback(True, using=using)
    return page.rows[offset:]


def _rank(part: Part, in_space: QuerySet, query, space: EmbeddingSpace, page: _Page, using: str):
    """The part's rows in rank order, its query sent now (under its own settings)."""
    matched = in_space.filter(part.image_filter)
    if part.exact:
        if part.image_ids is not None:  # = ANY: one index scan; IN (SELECT unnest ...) took twice as long
            matched = matched.filter(RawSQL("catalog_embedding.image_id = ANY(%s::bigint[])", [part.image_ids],
                                            output_field=BooleanField()))
        parallel = part.matching is None or part.matching >= PARALLEL_MIN_ROWS
        ranked = _exact(matched, query, page, using, parallel=parallel)
    else:
        ranked = _hnsw(matched, query, space, part, page, using)
    if not page.collapse_groups:
        return iter(list(ranked))
    return _opened(ranked)


_pool: tuple[tuple[int, int], ThreadPoolExecutor] | None = None  # ((pid, threads), pool)
_pool_lock = threading.Lock()
_helper_connections: set = set()  # the helpers' DatabaseWrappers that have connected


def _helpers() -> ThreadPoolExecutor:
    """This process's threads that rank parts beside a search's own (SEARCH_PARALLEL - 1 of them)."""
    global _pool
    threads = settings.SEARCH_PARALLEL - 1
    with _pool_lock:
        # Made again in a forked child (its threads stayed in the parent) or for a changed setting.
        if _pool is None or _pool[0] != (os.getpid(), threads):
            _pool = ((os.getpid(), threads), ThreadPoolExecutor(threads, thread_name_prefix="search-part"))
        return _pool[1]


def _side_by_side(parts: list[Part], in_space: QuerySet, query, space: EmbeddingSpace, page: _Page,
                  using: str) -> list[list]:
    """Each part's rows, ranked on up to ``settings.SEARCH_PARALLEL`` connections at once: PostgreSQL
    walks an HNSW graph on one core and runs no index scan under a parallel append, so a date range
    over five value graphs took five walks' time (bench/README.md).

    The search's own thread takes parts too, and helpers only take parts nobody has started: with
    every helper busy (other searches), a search runs its parts one after the other, never waits in a
    queue. A part not counted yet (``walk_from``) is counted here first, while a helper walks it; too
    few rows: ranked exactly instead, its walk dropped or never started (``parts`` is updated)."""
    walked: list[list | None] = [None] * len(parts)  # each part's rows, by whoever took it
    exact: dict[int, list] = {}  # parts a count sent to exact ranking: their rows
    undecided = [i for i, part in enumerate(parts) if part.walk_from is not None]
    waiting = undecided + [i for i in range(len(parts)) if i not in undecided]  # nobody has started these
    lock = threading.Lock()

    def take(helper: bool = False) -> tuple[int, Part] | None:
        with lock:
            if not waiting:
                return None
            i = waiting.pop(0)
            if helper:
                running[i] = None  # taken; its connection once open
            return i, parts[i]

    given_back: list[int] = []  # parts a helper could not finish: this thread, which holds the locks, ranks them
    running: dict[int, object] = {}  # parts a helper took: its connection, to cancel a needless walk
    needless: set[int] = set()  # parts taken by a helper that their count sent to exact ranking

    def help_out() -> None:  # on a helper thread, with its own connection
        while (taken := take(helper=True)) is not None:
            i, part = taken
            connection = connections[using]

            def started(i: int = i, connection=connection) -> None:  # called within this iteration
                with lock:
                    if i in needless:
                        raise _Needless
                    running[i] = connection.connection

            try:
                walked[i] = _rank_alone(part, in_space, query, space, page, using, started=started)
            except _Needless:
                continue
            except Exception as error:
                state = getattr(error.__cause__, "sqlstate", None) if isinstance(error, OperationalError) else None
                if state == QUERY_CANCELED and i in needless:
                    continue  # cancelled here: its count sent it to exact ranking
                with lock:
                    if isinstance(error, _HandBack) or state == LOCK_NOT_AVAILABLE:
                        given_back.append(i)  # no connection, or a lock it must not wait for
                        return
                    waiting.clear()  # a statement_timeout, the database gone: the search's error, now
                raise
            finally:
                with lock:
                    running.pop(i, None)

    helpers = [_helpers().submit(help_out) for _ in range(min(len(parts), settings.SEARCH_PARALLEL - 1))]
    try:
        for i in undecided:  # counted here while a helper walks them
            part = parts[i]
            matching, ids = _graph_share(space, part.image_filter, part.walk_from, using)
            with lock:
                if matching >= part.walk_from:
                    parts[i] = Part(part.image_filter, exact=False, matching=matching, ef_search=part.ef_search,
                                    graph=part.graph)
                    continue
                # Too few of the graph's rows for its walk (a walk that may run to hnsw.max_scan_tuples):
                # it never starts, or is cancelled.
                parts[i] = Part(part.image_filter, exact=True, matching=matching, image_ids=ids)
                if i in waiting:
                    waiting.remove(i)
                elif i in running:
                    needless.add(i)
                    _cancel(running[i])
            exact[i] = list(_rank(parts[i], in_space, query, space, page, using))
        while (taken := take()) is not None:
            walked[taken[0]] = list(_rank(taken[1], in_space, query, space, page, using))
    finally:
        with lock:
            waiting.clear()  # after an error here, helpers start nothing more
        # A helper not started yet (all busy with other searches) is cancelled: this thread took its
        # parts. (wait() would wait for a cancelled one until the pool reached it.) The others are
        # waited for: no walk outlives its search, one its count made needless included.
        started = [helper for helper in helpers if not helper.cancel()]
        # A cancel that reaches a helper between two statements is ignored (PostgreSQL drops a cancel
        # that finds its backend idle): sent again until the needless walk has ended. It cannot reach
        # the helper's next part: that needs ``lock``, held while it is sent.
        while wait(started, timeout=0.05).not_done:
            with lock:
                for i in needless:
                    _cancel(running.get(i))
    for helper in started:
        helper.result()  # a helper's error (the database gone) is this search's
    for i in given_back:
        if i not in exact:
            walked[i] = list(_rank(parts[i], in_space, query, space, page, using))
    return [exact[i] if i in exact else walked[i] for i in range(len(parts))]


class _Needless(Exception):
    """A helper's part that its count sent to exact ranking before its walk started."""


class _HandBack(Exception):
    """A helper that could not connect: the search's own connection ranks its part."""


def _cancel(connection) -> None:
    """Cancel the statement a helper's connection runs (a needless walk), if any."""
    if connection is None:
        return
    try:
        connection.cancel_safe(timeout=5)
    except Exception:  # not cancelled: the walk runs to its end, its rows dropped
        logger.warning("could not cancel a needless walk", exc_info=True)


def _rank_alone(part: Part, in_space: QuerySet, query, space: EmbeddingSpace, page: _Page, using: str, *,
                started=lambda: None) -> list:
    """One part's rows on this helper thread's own connection, in its own transaction (rolled back);
    ``started()`` is called once the connection is open."""
    connection = connections[using]
    # No request starts or ends on this thread: its connection is checked here, closed when broken
    # or past its age, and kept between parts even where IMAGESEARCH_DB_CONN_MAX_AGE is 0 (a new
    # connection for each part cost more than ranking side by side won): a fixed set, one per
    # helper and database.
    try:
        connection.close_if_unusable_or_obsolete()
        if connection.connection is None:
            connection.ensure_connection()
            if connection.close_at is not None:
                connection.close_at = max(connection.close_at, time.monotonic() + HELPER_CONNECTION_MAX_AGE)
            with _pool_lock:
                _helper_connections.add(connection)
    except DatabaseError as error:  # too many clients, a pooler's refusal: not the search's failure
        logger.warning("a search helper could not connect to %s: %s", using, error)
        raise _HandBack from error
    started()
    with transaction.atomic(using=using):
        # Never wait for a lock: a lock request queued behind the search's own transaction (a
        # migration, a DROP INDEX, a replica replaying one) would wait for it, and it for this
        # helper, a cycle through Python that PostgreSQL's deadlock detector cannot see.
        _set_local(using, lock_timeout=HELPER_LOCK_TIMEOUT)
        rows = list(_rank(part, in_space, query, space, page, using))
        transaction.set_rollback(True, using=using)
    return rows


def close_helper_connections() -> None:
    """Close the helpers' connections and let their threads go (new ones start when next needed,
    with the database settings of then), while no search runs: for tests, before their database goes
    or an alias changes."""
    global _pool
    with _pool_lock:
        opened = list(_helper_connections)
        _helper_connections.clear()
        if _pool is not None:
            _pool[1].shutdown(wait=False)
            _pool = None
    for connection in opened:
        connection.inc_thread_sharing()  # closed from this thread while its helper is idle
        try:
            connection.close()
        finally:
            connection.dec_thread_sharing()


def _opened(ranked):
    """The rows of a server-side cursor, opened now under the settings just made (another part's
    come next); closing it closes the cursor."""
    first = list(itertools.islice(ranked, 1))

    def rows():
        try:
            yield from first
            yield from ranked
        finally:
            ranked.close()
    return rows()


def _rank_key(row) -> tuple:
    return row[1], row[0]  # (negative inner product, image id): the order every part yields


class _Stream:
    """A part's ranked rows, noting whether they were read to their end."""

    def __init__(self, rows, *, walk: bool):
        self.rows, self.walk, self.read, self.ended = rows, walk, 0, False

    def __iter__(self):
        for row in self.rows:
            self.read += 1
            yield row
        self.ended = True

    def close(self) -> None:
        getattr(self.rows, "close", lambda: None)()  # a server-side cursor closes inside the transaction

    def gave_up(self, page: _Page) -> bool:
        """A walk read to its end with fewer rows than asked for (collapsing asks for all it has)."""
        return self.walk and self.ended and (page.collapse_groups or self.read < page.wanted)


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


def _ranked(matched: QuerySet, distance, page: _Page):
    ranked = matched.annotate(distance=distance).order_by("distance", "image_id").values_list(*page.fields)
    if not page.collapse_groups:
        return ranked[:page.wanted]  # one round trip
    # Collapsing needs an unknown depth: a server-side cursor reads only as deep as rows are taken.
    return ranked.iterator(chunk_size=4 * page.wanted)


def _exact(matched: QuerySet, query, page: _Page, using: str, *, parallel: bool):
    # The bare column is not the index expression (``vector::halfvec(n)``), so no HNSW here: the
    # planner scans the filter's rows, computes their distances and keeps the top rows.
    _set_local(using, max_parallel_workers_per_gather=2 if parallel else 0, jit="off")
    return _ranked(matched, MaxInnerProduct("vector", query), page)


def _hnsw(matched: QuerySet, query, space: EmbeddingSpace, part: Part, page: _Page, using: str):
    _set_local(using, **{"hnsw.iterative_scan": "strict_order", "hnsw.ef_search": part.ef_search,
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
        return ranked[:page.wanted]
    return ranked.iterator(chunk_size=4 * page.wanted)


@dataclass(frozen=True)
class _Split:
    graph_parts: list[tuple[str, int, Q, bool]]  # (graph label, its rows, the part's filter, whole graph)
    rest: Q | None  # the filter's rows outside those graphs


def _split(image_filter: Q, graphs: dict[tuple[str, str], int]) -> _Split | None:
    """The filter's rows split by the value graphs of one column (the one whose graphs cover the
    fewest rows), or None when no value graph covers any of them."""
    if not graphs:
        return None
    conditions = _conditions(image_filter)
    if conditions is None:
        return None
    best = None
    for split in (_split_city(conditions, graphs), _split_orientation(conditions, graphs),
                  _split_years(conditions, graphs)):
        if split is not None and (best is None or _graph_rows(split) < _graph_rows(best)):
            best = split
    return best


def _graph_rows(split: _Split) -> int:
    return sum(rows for _, rows, _, _ in split.graph_parts)


def _conditions(image_filter: Q) -> list | None:
    """The AND-ed conditions of a filter: (lookup, value) pairs, or Q objects left as they are; None
    for a filter that is not a conjunction."""
    if image_filter.negated or (image_filter.connector != Q.AND and len(image_filter.children) > 1):
        return None
    conditions = []
    for child in image_filter.children:
        if isinstance(child, Q) and not child.negated and (child.connector == Q.AND or len(child.children) == 1):
            inner = _conditions(child)
            if inner is None:
                return None
            conditions += inner
        else:
            conditions.append(child)
    return conditions


def _and(conditions) -> Q:
    result = Q()
    for condition in conditions:
        result &= condition if isinstance(condition, Q) else Q(condition)
    return result


def _split_city(conditions: list, graphs: dict) -> _Split | None:
    named = [c for c in conditions if isinstance(c, tuple) and c[0] in ("city", "city__in")]
    if len(named) != 1:
        return None
    lookup, value = named[0]
    cities = [value] if lookup == "city" else list(dict.fromkeys(value))
    others = [c for c in conditions if c is not named[0]]
    graphed = [city for city in cities if ("city", city) in graphs]
    if not graphed:
        return None
    parts = [(f"city={city}", graphs[("city", city)], _and([*others, ("city", city)]), not others) for city in graphed]
    rest = [city for city in cities if city not in graphed]
    return _Split(parts, _and([*others, ("city__in", rest)]) if rest else None)


def _split_orientation(conditions: list, graphs: dict) -> _Split | None:
    named = [c for c in conditions if isinstance(c, tuple) and c[0] == "orientation"]
    if len(named) != 1 or ("orientation", str(named[0][1])) not in graphs:
        return None
    others = [c for c in conditions if c is not named[0]]
    value = str(named[0][1])
    return _Split([(f"orientation={value}", graphs[("orientation", value)], _and(conditions), not others)], None)


def _split_years(conditions: list, graphs: dict) -> _Split | None:
    """A date range over the year graphs: from its start on, each stretch goes to the longest graph
    (a year or an aligned block of years) that it covers whole, or else to the shortest graph that
    holds it (a part of a year, counted); stretches without a graph are the rest."""
    bounds = [c for c in conditions if isinstance(c, tuple) and c[0].startswith("taken_at")]
    if not bounds or any(lookup not in ("taken_at__gte", "taken_at__lt") for lookup, _ in bounds):
        return None
    if len(bounds) != len({lookup for lookup, _ in bounds}):
        return None
    low = dict(bounds).get("taken_at__gte")
    high = dict(bounds).get("taken_at__lt")
    others = [c for c in conditions if c not in bounds]
    spans = []  # (start, end, value) of each year graph: its rows are taken_at in [start, end)
    for column, value in graphs:
        if column == "year":
            first, last = year_span(value)
            if 1 <= first <= last <= 9998:  # a hand-made row outside what refresh_filter_graphs builds serves nothing
                spans.append((year_bounds(first)[0], year_bounds(last)[1], value))
    if not spans:
        return None
    parts, uncovered, cursor = [], [], low  # [cursor, ...) is not yet covered
    if cursor is None:  # open start: the rows before the first graph are the rest's
        cursor = min(span[0] for span in spans)
        uncovered.append((None, cursor if high is None else min(cursor, high)))
    while high is None or cursor < high:
        holding = [span for span in spans if span[0] <= cursor < span[1]]
        whole = [span for span in holding if span[0] == cursor and (high is None or span[1] <= high)]
        if whole:
            start, end, value = max(whole, key=lambda span: span[1])
        elif holding:
            start, end, value = min(holding, key=lambda span: span[1] - span[0])
        else:
            later = min((span[0] for span in spans if span[0] > cursor), default=None)
            if later is None or (high is not None and later >= high):
                uncovered.append((cursor, high))
                break
            uncovered.append((cursor, later))
            cursor = later
            continue
        part_low, part_high = max(cursor, start), end if high is None else min(end, high)
        parts.append((f"year={value}", graphs[("year", value)],
                      _and([*others, ("taken_at__gte", part_low), ("taken_at__lt", part_high)]),
                      not others and part_low == start and part_high == end))
        cursor = part_high
    if not parts:
        return None
    gaps = Q()
    for gap_low, gap_high in uncovered:
        gap = Q(taken_at__isnull=False)
        if gap_low is not None:
            gap &= Q(taken_at__gte=gap_low)
        if gap_high is not None:
            gap &= Q(taken_at__lt=gap_high)
        gaps |= gap
    return _Split(parts, _and(others) & gaps if uncovered else None)


def _graphs_of(space: EmbeddingSpace, using: str) -> dict[tuple[str, str], int]:
    """{(column, value): rows} of the space's value graphs, refreshed every SPACE_SIZE_TTL seconds."""
    def load() -> dict:
        graphs = {(graph.column, graph.value): graph for graph in FilterGraph.objects.using(using).filter(space=space)}
        if not graphs:
            return {}
        with connections[using].cursor() as cursor:  # a row whose index is gone or invalid serves nothing
            cursor.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                           "WHERE c.relname = ANY(%s) AND i.indisvalid", [[g.index_name for g in graphs.values()]])
            valid = {name for (name,) in cursor.fetchall()}
        return {key: graph.rows for key, graph in graphs.items() if graph.index_name in valid}

    return _cached(_value_graphs, (using, space.pk), load)


def forget_space(space_id: int) -> None:
    """Drop what this process keeps about a space (its size, graph build, value graphs, counts)."""
    for store in (_space_sizes, _graph_builds, _value_graphs, _reached, _estimates):
        for key in [key for key in list(store) if key[1] == space_id]:  # searches may add keys meanwhile
            store.pop(key, None)


def forget_counts() -> None:
    """Drop the counts and estimates this process keeps of filters (a filter's next search counts)."""
    _reached.clear()
    _estimates.clear()


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


def _cached(store: dict, key, compute, *, ttl: float = SPACE_SIZE_TTL):
    """``compute()``, kept in ``store`` for ``ttl`` seconds per key (KNOWN_MAX keys at most)."""
    now = time.monotonic()
    cached = store.get(key)
    if cached is None or now - cached[0] > ttl:
        if len(store) >= KNOWN_MAX:  # bounded whatever the filters (estimates): dropped at once
            store.clear()
        cached = store[key] = (now, compute())
    return cached[1]


def _reached_lately(key) -> bool:
    """Whether a count of ``key`` (using, space, filter, cap) reached its cap within KNOWN_TTL seconds."""
    when = _reached.get(key)
    return when is not None and _now() - when <= KNOWN_TTL


def _note_reached(key) -> None:
    if len(_reached) >= KNOWN_MAX:  # bounded whatever the filters: dropped at once, counted again
        _reached.clear()
    _reached[key] = _now()


_now = time.monotonic  # the clock of kept counts (a test moves it)


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
    _value_graphs.clear()
    forget_counts()
    connection = connections[using]
    with connection.cursor() as cursor:
        # VACUUM cannot run inside a transaction block; ANALYZE alone still helps there.
        cursor.execute("ANALYZE catalog_embedding" if connection.in_atomic_block else "VACUUM ANALYZE catalog_embedding")
