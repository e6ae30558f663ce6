"""Searches on PostgreSQL streaming replicas; everything else on the primary.

Every alias in DATABASES other than "default" is a read replica (DATABASE_REPLICA_URLS). The router
sends all ORM traffic to the primary; a search asks ``search_database()`` for an alias and passes it
with ``using=``. Replica health (up, a standby, replay lag) is checked in a background thread at most
every ``CHECK_INTERVAL`` seconds per process, so a search never waits for a check; a replica that
does not answer is left alone for ``DOWN_RETRY`` seconds.

Lag (how old the replica's data may be) is zero when it has replayed all the primary has flushed;
else the lesser of two upper bounds: the time since its last replayed commit, and the time since
the primary stood at a WAL position the replica has replayed (each check notes the primary's). The
first alone would grow on an idle primary although the standby lacks nothing.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connections

logger = logging.getLogger(__name__)

PRIMARY = "default"
CHECK_INTERVAL = 3.0  # seconds between health checks of the replicas, per process
DOWN_RETRY = 30.0  # a replica that failed is not tried again (not even checked) for this long


class PrimaryRouter:
    """All reads and writes of the ORM go to the primary: only a search that asks for a replica
    (``using=search_database()``) runs on one, so a write is never followed by a stale read."""

    def db_for_read(self, model, **hints):
        return PRIMARY

    def db_for_write(self, model, **hints):
        return PRIMARY

    def allow_relation(self, obj1, obj2, **hints):
        return True  # replicas hold the same rows

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == PRIMARY  # replicas get the schema through replication


@dataclass
class _Health:
    usable: bool = False
    lag: float | None = None  # seconds; None until checked
    down_until: float = 0.0  # time.monotonic() before which the replica is not tried
    caught_up_at: float | None = None  # time.monotonic() up to which it is known to have all data
    problem: str = ""  # why it is not used, as last logged


_health: dict[str, _Health] = {}
_lock = threading.Lock()  # guards _health and _next_check
_checking = threading.Lock()  # one check at a time per process
_next_check = 0.0
_round_robin = itertools.count()
# (time.monotonic() just before asking, the primary's flushed WAL position) of the latest checks.
_primary_positions: collections.deque[tuple[float, int]] = collections.deque(maxlen=20)


def replica_aliases() -> list[str]:
    return [alias for alias in connections.settings if alias != PRIMARY]


def search_database() -> str:
    """The alias a search should run on: a replica that answers and lags at most
    IMAGESEARCH_REPLICA_MAX_LAG seconds (taken in turn when several do), else the primary."""
    global _next_check
    aliases = replica_aliases()
    if not aliases:
        return PRIMARY
    now = time.monotonic()
    with _lock:
        due = now >= _next_check
        if due:
            _next_check = now + CHECK_INTERVAL
        usable = [alias for alias in aliases if (h := _health.get(alias)) and h.usable and h.down_until <= now]
    if due:
        threading.Thread(target=_check_in_background, name="replica-health", daemon=True).start()
    if not usable:
        return PRIMARY
    return usable[next(_round_robin) % len(usable)]


def mark_down(alias: str) -> None:
    """A search on ``alias`` failed to reach it: skip it for DOWN_RETRY seconds."""
    with _lock:
        health = _health.setdefault(alias, _Health())
        health.usable = False
        health.down_until = time.monotonic() + DOWN_RETRY
        _report(alias, health, f"failed during a search; searches use the primary for {DOWN_RETRY:.0f} s")


def check_replicas() -> dict[str, _Health]:
    """Check every replica now (the background thread does this; tests and operators may call it)
    and return a copy of the health table."""
    with _checking:
        return _check_all()


def _check_all() -> dict[str, _Health]:
    global _next_check
    asked_at = time.monotonic()
    primary_lsn = _primary_flushed_lsn()
    if primary_lsn is not None:
        _primary_positions.append((asked_at, primary_lsn))
    for alias in replica_aliases():
        with _lock:
            health = _health.setdefault(alias, _Health())
            if health.down_until > time.monotonic():
                continue
        _check_one(alias, health, primary_lsn)
    with _lock:
        _next_check = time.monotonic() + CHECK_INTERVAL
        return {alias: _Health(**vars(h)) for alias, h in _health.items()}


def reset() -> None:
    """Forget all health information (tests)."""
    global _next_check
    with _lock:
        _health.clear()
        _primary_positions.clear()
        _next_check = 0.0


def _check_in_background() -> None:
    if not _checking.acquire(blocking=False):
        return  # a check is still running (a replica slow to answer): no pile of waiting threads
    try:
        _check_all()
    except Exception:  # a bug here must not kill searches; the next check tries again
        logger.exception("checking the read replicas failed")
    finally:
        _checking.release()
        connections.close_all()  # this thread's connections only


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


def _primary_flushed_lsn() -> int | None:
    """The primary's flushed WAL position (all it has committed), or None when it cannot be asked:
    lag is then judged from the replica alone."""
    try:
        with connections[PRIMARY].cursor() as cursor:
            cursor.execute("SELECT CASE WHEN pg_is_in_recovery() THEN NULL "
                           "ELSE pg_current_wal_flush_lsn()::text END")
            (position,) = cursor.fetchone()
    except DatabaseError:
        return None
    return None if position is None else _lsn(position)


def _check_one(alias: str, health: _Health, primary_lsn: int | None) -> None:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
                "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8")
            in_recovery, received, replayed, since_last_replay = cursor.fetchone()
    except DatabaseError as exc:
        with contextlib.suppress(DatabaseError):
            connections[alias].close()
        with _lock:
            health.usable = False
            health.down_until = time.monotonic() + DOWN_RETRY
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _report(alias, health, f"does not answer ({reason}); searches use the primary for {DOWN_RETRY:.0f} s")
        return
    now = time.monotonic()
    replayed = None if replayed is None else _lsn(replayed)
    with _lock:
        if replayed is not None and primary_lsn is None:
            # The primary cannot be asked: the replica has all it could get once it replayed what it received.
            caught_up = received is not None and replayed >= _lsn(received)
            if caught_up:
                health.caught_up_at = now
        else:
            caught_up = replayed is not None and replayed >= primary_lsn
            # It has everything the primary had flushed at the latest check whose position it has replayed.
            reached = [asked_at for asked_at, position in _primary_positions
                       if replayed is not None and replayed >= position]
            if reached:
                health.caught_up_at = max(reached[-1], health.caught_up_at or 0.0)
        bounds = [since_last_replay] if since_last_replay is not None else []
        if health.caught_up_at is not None:
            bounds.append(now - health.caught_up_at)
        lag = 0.0 if caught_up else max(0.0, min(bounds, default=math.inf))
        max_lag = settings.REPLICA_MAX_LAG
        health.lag = lag
        health.usable = bool(in_recovery) and lag <= max_lag
    if not in_recovery:
        _report(alias, health, "is not a standby (pg_is_in_recovery() is false); not used")
    elif not health.usable:
        _report(alias, health, f"lags more than {max_lag} s; searches use the primary")
    else:
        _report(alias, health, "")


def _report(alias: str, health: _Health, problem: str) -> None:
    """Log a replica's problem when it starts, and when it is over."""
    if problem != health.problem:
        if problem:
            logger.warning("read replica %s %s", alias, problem)
        else:
            logger.info("read replica %s is in use again", alias)
        health.problem = problem
