"""A filtered search whose plan has several parts (value graphs) walks them side by side, each on its
own database connection (``settings.SEARCH_PARALLEL``), and merges them into the same ranking as one
after the other. The rows are committed (other connections see nothing else), so this module's tests
are transactional and drop their space at the end.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from django.db import connection, transaction

from bench.clustered import exact_neighbours, filter_cases, image_ids_of, load_collection, make_collection, make_queries
from catalog import spaces, vector_search
from catalog.vector_search import nearest, plan_for

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 3_000
DIMS = 32
# The shipped limits as shares of a million images (as in test_filtered_search.py), so that filters
# split across value graphs at this size.
SCALED = {"EXACT_MIN_ROWS": ROWS // 50, "EXACT_SHARE": 0.30, "EXACT_MAX_ROWS": ROWS * 2 // 5}


@pytest.fixture
def graphed(monkeypatch):
    for name, value in SCALED.items():
        monkeypatch.setattr(vector_search, name, value)
    monkeypatch.setattr(vector_search, "YEAR_BLOCKS", ())  # a range of years: one part per year, several parts
    collection = make_collection(ROWS, dims=DIMS, seed=5)
    with transaction.atomic():
        space, image_ids = load_collection(collection, space_name="test/side-by-side")
    spaces.refresh_filter_graphs(name=space.name, min_rows=ROWS * 3 // 200)
    vector_search.forget_space(space.pk)
    yield collection, space, image_ids
    vector_search.close_helper_connections()  # kept open between parts: none may outlive the test database
    vector_search.forget_space(space.pk)
    spaces.drop(name=space.name)  # its value graphs' indexes too, which a flush would leave behind


def _truth(collection, case, query, k: int, image_ids) -> list[int]:
    """The exact top k over the half-precision values the database holds."""
    half = collection.vectors.astype(np.float16).astype(np.float32)
    scores = half @ np.asarray(query, dtype=np.float16).astype(np.float32)
    return image_ids_of(exact_neighbours(collection, case.mask, query, k, scores=scores), image_ids)


def _several_graph_cases(collection, space):
    cases = [case for case in filter_cases(collection)
             if sum(bool(part.graph) for part in plan_for(space=space, image_filter=case.filters.embedding_q()).parts) > 1]
    assert cases, "no filter case splits across several value graphs"
    return cases


def _guessed_yet_ranked_exactly(collection, space):
    """A filter case with a part walked before it is counted whose count then ranks it exactly."""
    return next(c for c in filter_cases(collection)
                if any(p.walk_from for p in plan_for(space=space, image_filter=c.filters.embedding_q(),
                                                     count_later=True).parts)
                and all(p.exact for p in plan_for(space=space, image_filter=c.filters.embedding_q()).parts))


def test_the_parts_of_a_plan_run_on_their_own_connections_and_merge_into_one_ranking(graphed, settings, monkeypatch):
    collection, space, image_ids = graphed
    queries = make_queries(collection, 3, seed=7)
    ran = []
    rank = vector_search._rank

    def recording(part, *args):
        ran.append((threading.current_thread().name, connection.connection.info.backend_pid))
        if len(ran) == 1 and threading.current_thread() is threading.main_thread():
            time.sleep(0.2)  # the search's own thread is slow: a helper surely takes a part meanwhile
        return rank(part, *args)

    monkeypatch.setattr(vector_search, "_rank", recording)
    connection.ensure_connection()
    own_pid = connection.connection.info.backend_pid
    for case in _several_graph_cases(collection, space):
        image_filter = case.filters.embedding_q()
        for q, query in enumerate(queries):
            settings.SEARCH_PARALLEL = 1
            ran.clear()
            one_by_one = nearest(space=space, vector=query, image_filter=image_filter, offset=0, limit=30)
            assert ran and set(ran) == {(threading.current_thread().name, own_pid)}
            ran.clear()
            settings.SEARCH_PARALLEL = 2
            side_by_side = nearest(space=space, vector=query, image_filter=image_filter, offset=0, limit=30)
            assert len(ran) == len(plan_for(space=space, image_filter=image_filter).parts), case.label
            helped = [(name, pid) for name, pid in ran if name.startswith("search-part")]
            assert helped and all(pid != own_pid for _, pid in helped), ran  # a helper, its own connection
            assert set(ran) - set(helped) <= {(threading.main_thread().name, own_pid)}, ran
            assert side_by_side == one_by_one, case.label
            distances = [n.distance for n in side_by_side]
            assert distances == sorted(distances)
            truth = _truth(collection, case, query, 30, image_ids)
            found = [n.image_id for n in side_by_side]
            assert len(set(found) & set(truth)) >= 0.9 * len(truth), case.label


def test_walks_that_give_up_side_by_side_are_ranked_exactly(graphed, settings, monkeypatch):
    collection, space, image_ids = graphed
    settings.SEARCH_PARALLEL = 3
    monkeypatch.setattr(vector_search, "MAX_SCAN_TUPLES", 5)  # every walk gives up at once
    case = _several_graph_cases(collection, space)[0]
    for query in make_queries(collection, 2, seed=8):
        found = nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=30)
        truth = _truth(collection, case, query, 30, image_ids)
        assert [n.image_id for n in found] == truth, case.label


def test_a_search_inside_a_transaction_or_collapsing_groups_stays_on_its_own_connection(graphed, settings,
                                                                                        monkeypatch):
    collection, space, _image_ids = graphed
    settings.SEARCH_PARALLEL = 4

    def refuse(*args):
        raise AssertionError("another connection cannot see this transaction's rows")

    monkeypatch.setattr(vector_search, "_side_by_side", refuse)
    case = _several_graph_cases(collection, space)[0]
    query = make_queries(collection, 1, seed=9)[0]
    nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=10,
            collapse_groups=True)
    with transaction.atomic():
        found = nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=10)
    assert len(found) == min(10, int(np.sum(case.mask)))


def test_a_part_counted_while_it_is_walked_keeps_the_plan_its_count_decides(graphed, settings, monkeypatch):
    collection, space, image_ids = graphed
    settings.SEARCH_PARALLEL = 2
    # Every part of a value graph with more conditions is guessed to be walked, so that the cases whose
    # count says "rank exactly" show a guess undone.
    monkeypatch.setattr(vector_search, "_likely_walked", lambda *args: True)
    ranked = []
    rank = vector_search._rank
    monkeypatch.setattr(vector_search, "_rank", lambda part, *args: ranked.append(part) or rank(part, *args))
    outcomes = set()
    for case in filter_cases(collection):
        image_filter = case.filters.embedding_q()
        guessed = [p for p in plan_for(space=space, image_filter=image_filter, count_later=True).parts if p.walk_from]
        if not guessed:
            continue
        counted = plan_for(space=space, image_filter=image_filter)  # counted first, as one after the other does
        for query in make_queries(collection, 2, seed=10):
            ranked.clear()
            found = nearest(space=space, vector=query, image_filter=image_filter, offset=0, limit=30)
            # The parts the count sends to exact ranking are those that counting first ranks exactly.
            assert {part.image_filter for part in ranked if part.exact} == \
                {part.image_filter for part in counted.parts if part.exact}, case.label
            # (A guessed part a helper had not started when its count sent it to exact ranking never walks.)
            assert {part.image_filter for part in ranked if part.walk_from} <= \
                {part.image_filter for part in guessed}, case.label
            truth = _truth(collection, case, query, 30, image_ids)
            assert [n.distance for n in found] == sorted(n.distance for n in found)
            assert len({n.image_id for n in found} & set(truth)) >= 0.9 * len(truth), case.label
        outcomes |= {part.exact for part in counted.parts if part.image_filter in {g.image_filter for g in guessed}}
    assert outcomes == {True, False}, "the cases should include a guess kept and a guess undone"


def test_a_search_whose_helpers_are_all_busy_runs_its_parts_itself(graphed, settings):
    collection, space, _image_ids = graphed
    settings.SEARCH_PARALLEL = 2
    case = _several_graph_cases(collection, space)[0]
    query = make_queries(collection, 1, seed=12)[0]
    settings.SEARCH_PARALLEL = 1
    one_by_one = nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=20)
    settings.SEARCH_PARALLEL = 2
    release = threading.Event()
    busy = vector_search._helpers().submit(release.wait, 60)  # the only helper, taken by "another search"
    try:
        started = time.monotonic()
        found = nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=20)
        assert time.monotonic() - started < 30  # did not wait for the helper
        assert not busy.done()
    finally:
        release.set()
    assert found == one_by_one


def test_a_search_ends_while_a_table_lock_waits_behind_it(graphed, settings, monkeypatch):
    """A lock request queued behind the search's transaction (a migration, a plain DROP INDEX) must not
    wait for the search while the search waits for a helper queued behind that request."""
    collection, space, image_ids = graphed
    settings.SEARCH_PARALLEL = 2
    case = _several_graph_cases(collection, space)[0]
    query = make_queries(collection, 1, seed=13)[0]
    outcome = []

    def lock_the_table():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '20s'")
                cursor.execute("LOCK TABLE catalog_embedding IN ACCESS EXCLUSIVE MODE")
            outcome.append("granted")
        finally:
            connection.close()

    locker = threading.Thread(target=lock_the_table)
    rank = vector_search._rank
    queued = threading.Event()

    def queue_the_lock_first(part, *args):
        if threading.current_thread() is not threading.main_thread():
            queued.wait(10)  # a helper's part starts once the lock request waits
            return rank(part, *args)
        rows = rank(part, *args)  # sent: this search's transaction holds its share lock on the table
        if locker.ident is None:
            locker.start()  # another session's exclusive request queues behind this search
            with connection.cursor() as cursor:
                for _ in range(500):
                    cursor.execute("SELECT count(*) FROM pg_locks WHERE relation = 'catalog_embedding'::regclass"
                                   " AND mode = 'AccessExclusiveLock' AND NOT granted")
                    if cursor.fetchone()[0]:
                        break
                    time.sleep(0.01)
            queued.set()
        return rows

    monkeypatch.setattr(vector_search, "_rank", queue_the_lock_first)
    started = time.monotonic()
    found = nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=20)
    assert time.monotonic() - started < 10  # before: until the lock request's own timeout (or forever)
    locker.join(30)
    assert outcome == ["granted"]
    truth = _truth(collection, case, query, 20, image_ids)
    assert len({n.image_id for n in found} & set(truth)) >= 0.9 * len(truth)  # the helper's part, ranked here


@pytest.mark.parametrize("failing", ["search", "helper"])
def test_an_error_on_one_thread_stops_the_search_s_other_parts(graphed, settings, monkeypatch, failing):
    from django.db import DatabaseError

    collection, space, _image_ids = graphed
    settings.SEARCH_PARALLEL = 2
    case = max(_several_graph_cases(collection, space),
               key=lambda c: len(plan_for(space=space, image_filter=c.filters.embedding_q()).parts))
    assert len(plan_for(space=space, image_filter=case.filters.embedding_q()).parts) >= 3
    rank = vector_search._rank
    failed = threading.Event()
    after = []

    def fail_on_one_thread(part, *args):
        if threading.current_thread().name.startswith("search-part") == (failing == "helper"):
            time.sleep(0.05)
            failed.set()
            raise DatabaseError("canceling statement due to statement timeout")
        if failed.is_set():
            after.append(part)
        time.sleep(0.1)  # a walk
        return rank(part, *args)

    monkeypatch.setattr(vector_search, "_rank", fail_on_one_thread)
    with pytest.raises(DatabaseError):
        nearest(space=space, vector=make_queries(collection, 1, seed=14)[0],
                image_filter=case.filters.embedding_q(), offset=0, limit=20)
    assert len(after) <= 1  # the part another thread held when the search failed, and no other


def test_a_helper_keeps_its_connection_between_searches_until_closed(graphed, settings, monkeypatch):
    collection, space, _image_ids = graphed
    settings.SEARCH_PARALLEL = 2
    assert connection.settings_dict["CONN_MAX_AGE"] == 0  # a request's connection would close after it
    helper_pids = []
    rank = vector_search._rank

    def recording(part, *args):
        if threading.current_thread().name.startswith("search-part"):
            helper_pids.append(connection.connection.info.backend_pid)
        else:
            time.sleep(0.15)  # a helper surely takes a part
        return rank(part, *args)

    monkeypatch.setattr(vector_search, "_rank", recording)
    case = _several_graph_cases(collection, space)[0]
    for query in make_queries(collection, 3, seed=15):
        nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=10)
    assert len(helper_pids) >= 3 and len(set(helper_pids)) == 1, helper_pids  # one connection, reused

    def open_backends():
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [helper_pids[0]])
            return cursor.fetchone()[0]

    assert open_backends() == 1
    vector_search.close_helper_connections()
    for _ in range(100):  # the backend exits just after its client closes
        if not open_backends():
            break
        time.sleep(0.02)
    assert open_backends() == 0


@pytest.mark.parametrize("pause", [0, 1], ids=["walking", "between-statements"])
def test_a_walk_its_count_made_needless_is_cancelled(graphed, settings, monkeypatch, pause):
    """The count decides while the needless walk runs, or while its helper is between two statements
    (PostgreSQL drops a cancel that finds its backend idle: it must be sent again)."""
    collection, space, image_ids = graphed
    settings.SEARCH_PARALLEL = 2
    monkeypatch.setattr(vector_search, "_likely_walked", lambda *args: True)
    case = _guessed_yet_ranked_exactly(collection, space)
    rank = vector_search._rank
    walks = []
    reached = threading.Event()

    def slow_walk(part, *args):
        if part.walk_from is not None:  # the guessed walk, on a helper: as slow as a walk can get
            reached.set()
            time.sleep(pause)  # idle in transaction while the count decides: the first cancel is lost
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_sleep(20)")
                walks.append("ran to its end")
            except Exception as error:
                walks.append(type(error.__cause__).__name__)
                raise
        return rank(part, *args)

    monkeypatch.setattr(vector_search, "_rank", slow_walk)
    graph_share = vector_search._graph_share
    monkeypatch.setattr(vector_search, "_graph_share", lambda *args: reached.wait(10) and graph_share(*args))
    query = make_queries(collection, 1, seed=16)[0]
    started = time.monotonic()
    found = nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=20)
    assert time.monotonic() - started < 10, "the search waited for a walk it did not need"
    assert walks == ["QueryCanceled"]
    assert [n.image_id for n in found] == _truth(collection, case, query, 20, image_ids)
    # The helper's connection serves the next search.
    monkeypatch.setattr(vector_search, "_rank", rank)
    assert nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=20) == found


def test_a_helper_statement_cancelled_by_the_server_fails_the_search_once(graphed, settings, monkeypatch):
    """Only a cancel this search sent drops a part silently; a statement_timeout (or an operator's
    pg_cancel_backend) is the search's error, not a reason to run the part again."""
    from django.db import OperationalError

    collection, space, _image_ids = graphed
    settings.SEARCH_PARALLEL = 2
    case = _several_graph_cases(collection, space)[0]
    rank = vector_search._rank
    runs = []

    def timing_out_on_a_helper(part, *args):
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.3)  # a helper surely takes a part
            return rank(part, *args)
        runs.append(part.image_filter)
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = '50ms'")
            cursor.execute("SELECT pg_sleep(5)")
        return rank(part, *args)

    monkeypatch.setattr(vector_search, "_rank", timing_out_on_a_helper)
    with pytest.raises(OperationalError, match="statement timeout"):
        nearest(space=space, vector=make_queries(collection, 1, seed=17)[0],
                image_filter=case.filters.embedding_q(), offset=0, limit=20)
    assert len(runs) == 1


def test_a_helper_that_cannot_connect_hands_its_part_back(graphed, settings, monkeypatch):
    """Too many clients, a pooler's refusal: the search's own connection answers, and no error reaches
    the replica failover (which would mark a healthy replica down)."""
    from django.db import connections

    collection, space, _image_ids = graphed
    settings.SEARCH_PARALLEL = 2
    case = _several_graph_cases(collection, space)[0]
    query = make_queries(collection, 1, seed=19)[0]
    expected = nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=20)
    rank = vector_search._rank
    monkeypatch.setattr(vector_search, "_rank",
                        lambda part, *args: (threading.current_thread() is threading.main_thread()
                                             and time.sleep(0.1)) or rank(part, *args))
    vector_search.close_helper_connections()  # helpers connect anew ...
    database = connections.settings["default"]
    name, database["NAME"] = database["NAME"], "no_such_database"  # ... and are refused
    try:
        found = nearest(space=space, vector=query, image_filter=case.filters.embedding_q(), offset=0, limit=20)
    finally:
        database["NAME"] = name
        vector_search.close_helper_connections()
    assert found == expected
