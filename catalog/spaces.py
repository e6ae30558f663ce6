"""Embedding spaces over their lifecycle (``manage.py models``, the admin, the API).

One space is *active*: searches read it from the database on every request (one indexed row, on
the same database as the vectors they then search), so every process follows a switch at once
and a query vector always comes from the model of the space it is compared with. *Building*
spaces are back-filled by background jobs (catalog/jobs/builds.py) and receive new imports
beside the active one; ``activate`` switches in one transaction; ``drop`` removes a space that
no longer serves, with its vectors and its HNSW index.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import replace as replace_config
from datetime import timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from catalog import vector_search
from catalog.embedder import ClipEmbedder, EmbedderConfig, EmbedderUnavailable, get_embedder, is_loaded
from catalog.models import Embedding, EmbeddingSpace, FilterGraph, Image

logger = logging.getLogger(__name__)
State = EmbeddingSpace.State


class SpaceError(ValueError):
    """A lifecycle step that cannot be done; the message is meant for the user."""


# --- selectors -------------------------------------------------------------------------------------


def active_space(*, using: str = "default") -> EmbeddingSpace | None:
    return EmbeddingSpace.objects.using(using).filter(state=State.ACTIVE).first()


def serving_config() -> EmbedderConfig:
    """The model searches use: the active space's, else the configured one (CLIP_MODEL ...), also
    when the database cannot say (it may not be up yet)."""
    try:
        space = active_space()
        if space is not None and space.has_model:
            return EmbedderConfig.for_space(space)
    except (DatabaseError, EmbedderUnavailable):
        pass
    return EmbedderConfig.from_settings()


def space_for_search(*, using: str = "default") -> EmbeddingSpace | None:
    """The active space, read with the spaces being built in one query. While a space is being
    built, this process loads its model in the background, so that the first search after the
    switch finds it loaded (IMAGESEARCH_WARM_BUILDING_MODEL)."""
    rows = list(EmbeddingSpace.objects.using(using).filter(state__in=[State.ACTIVE, State.BUILDING]))
    building = [space for space in rows if space.state == State.BUILDING and space.has_model]
    if building and settings.WARM_BUILDING_MODEL:
        _warm(max(building, key=lambda space: space.pk))  # one: two models in memory at most
    return next((space for space in rows if space.state == State.ACTIVE), None)


_warming: set[EmbedderConfig] = set()  # loading now, or failed to load in this process (not retried)
_warming_lock = threading.Lock()


def _warm(space: EmbeddingSpace) -> None:
    try:
        config = EmbedderConfig.for_space(space)
    except EmbedderUnavailable:
        return
    if is_loaded(config):
        return
    with _warming_lock:
        if config in _warming:
            return
        _warming.add(config)
    threading.Thread(target=_load_in_background, args=(config,), name="warm-building-model", daemon=True).start()


def _load_in_background(config: EmbedderConfig) -> None:
    try:
        get_embedder(config)
    except Exception as error:  # noqa: BLE001 - only a warm-up: the build job reports real failures
        logger.warning("could not load %s ahead of a switch: %s", config.space_name, error)
        return  # stays in _warming: not tried again by this process
    with _warming_lock:
        _warming.discard(config)


def building_spaces() -> list[EmbeddingSpace]:
    """Spaces being built that a process can embed into (they record their model)."""
    return list(EmbeddingSpace.objects.filter(state=State.BUILDING).exclude(architecture="").order_by("pk"))


def images_missing_from(space: EmbeddingSpace):
    """Images a space still lacks: every image but those that failed (their file is unreadable)."""
    return Image.objects.exclude(embeddings__space=space).exclude(status=Image.Status.FAILED)


def lock_present(space_ids) -> set[int]:
    """Those of ``space_ids`` that still exist, locked against ``drop`` (FOR KEY SHARE, which
    concurrent writers share) until the caller's transaction ends: vectors are stored only into them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM catalog_embeddingspace WHERE id = ANY(%s) FOR KEY SHARE",
                       [sorted(set(space_ids))])
        return {row[0] for row in cursor.fetchall()}


@dataclass(frozen=True)
class SpaceStatus:
    space: EmbeddingSpace
    vectors: int
    missing: int
    images: int          # images a space should hold (all but failed ones)
    index_bytes: int | None  # None: the space has no HNSW index

    @property
    def coverage(self) -> float:
        """Percent of the images that have a vector in the space (100 for an empty collection)."""
        if not self.images:
            return 100.0
        return 100.0 * (self.images - min(self.missing, self.images)) / self.images


def space_status(space: EmbeddingSpace, *, images: int | None = None) -> SpaceStatus:
    """``images``: the count of images a space should hold, if the caller has it already."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(to_regclass(%s))", [space.index_name])
        index_bytes = cursor.fetchone()[0]
    if images is None:
        images = Image.objects.exclude(status=Image.Status.FAILED).count()
    return SpaceStatus(space=space, vectors=Embedding.objects.filter(space=space).count(),
                       missing=images_missing_from(space).count(), images=images, index_bytes=index_bytes)


def space_statuses() -> list[SpaceStatus]:
    images = Image.objects.exclude(status=Image.Status.FAILED).count()  # the same for every space
    return [space_status(space, images=images) for space in EmbeddingSpace.objects.order_by("pk")]


def model_label(space: EmbeddingSpace) -> str:
    if not space.has_model:
        return "(no model recorded)"
    weights = space.weights_file or space.pretrained or "untrained"
    return f"{space.architecture} {weights}" + (" (random weights)" if space.random_init else "")


# --- models of spaces ------------------------------------------------------------------------------


def config_for(*, architecture: str, pretrained: str = "", weights_file: str | Path | None = None) -> EmbedderConfig:
    """This machine's embedder configuration for another model (device, batch size, runtime and
    CLIP_RANDOM_INIT from the settings)."""
    return replace_config(EmbedderConfig.from_settings(), model=architecture, pretrained=pretrained or None,
                          weights_file=Path(weights_file) if weights_file else None)


def embedder_for(space: EmbeddingSpace) -> ClipEmbedder:
    """The loaded model of ``space`` (per-process cache in catalog.embedder); raises
    EmbedderUnavailable if it cannot be loaded or does not produce the space's vectors."""
    embedder = get_embedder(EmbedderConfig.for_space(space))
    if embedder.dimensions != space.dimensions:
        raise EmbedderUnavailable(f"{space.name} holds {space.dimensions}-d vectors but its model produces "
                                  f"{embedder.dimensions}-d.")
    return embedder


def ensure_space(*, config: EmbedderConfig, dimensions: int, state: str = State.BUILDING) -> EmbeddingSpace:
    """The space of ``config``'s vectors, created (with its index, in ``state``) on first use; the
    model identity is recorded on a space that lacks it (made before it was kept)."""
    identity = {"architecture": config.model, "pretrained": config.pretrained or "",
                "weights_file": str(config.weights_file) if config.weights_file else "",
                "random_init": config.random_init}
    space = EmbeddingSpace.objects.ensure(name=config.space_name, dimensions=dimensions, state=state, **identity)
    if space.weights_file and identity["weights_file"] and not _same_weights(space.weights_file,
                                                                             identity["weights_file"]):
        # A space is named after the weights file's name only: another file of the same name
        # (a fine-tune saved as open_clip_pytorch_model.bin) must not add its vectors to it.
        raise SpaceError(f"{space.name} holds the vectors of {space.weights_file}, a different file from "
                         f"{identity['weights_file']}; give the new weights file another name.")
    if not space.has_model:
        EmbeddingSpace.objects.filter(pk=space.pk, architecture="").update(**identity)
        space.refresh_from_db()
    return space


def _same_weights(recorded: str, given: str) -> bool:
    """Whether two weights paths hold the same file. A recorded path that this machine cannot see
    (another machine's mount) is taken on trust; else same size and same first and last MiB."""
    first, second = Path(recorded), Path(given)
    if not first.is_file() or not second.is_file() or first.samefile(second):
        return True
    if first.stat().st_size != second.stat().st_size:
        return False
    return _ends(first) == _ends(second)


def _ends(path: Path) -> tuple[bytes, bytes]:
    with path.open("rb") as handle:
        head = handle.read(1 << 20)
        handle.seek(max(0, path.stat().st_size - (1 << 20)))
        return head, handle.read(1 << 20)


def active_space_and_model(*, load=get_embedder) -> tuple[EmbeddingSpace, ClipEmbedder]:
    """The active space and its loaded model, for storing new images. A database without an active
    space (a new install) gets the configured model's space (CLIP_MODEL ...), made active."""
    space = active_space()
    if space is None:
        embedder = load()
        configured = ensure_space(config=embedder.config, dimensions=embedder.dimensions, state=State.RETIRED)
        try:
            with transaction.atomic():
                EmbeddingSpace.objects.filter(pk=configured.pk).update(state=State.ACTIVE,
                                                                       activated_at=timezone.now())
        except IntegrityError:
            pass  # another process made a space active meanwhile: that one serves
        space = active_space()
        if space.pk == configured.pk:
            return space, embedder
    return space, embedder_for(space)


# --- lifecycle steps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    space: EmbeddingSpace
    previous: EmbeddingSpace | None
    missing: int  # images without a vector in the new space (only with force)


def _lock_spaces() -> dict[str, EmbeddingSpace]:
    """Lock every space row (few): lifecycle steps run one at a time."""
    return {space.name: space for space in EmbeddingSpace.objects.select_for_update().order_by("pk")}


def activate(*, name: str, force: bool = False) -> Activation:
    """Make ``name`` the space that serves searches, in one transaction: every search before its
    commit reads the old space, every search after it the new one. Refused while images are
    missing from it, unless ``force``."""
    with transaction.atomic():
        spaces = _lock_spaces()
        space = spaces.get(name)
        if space is None:
            raise SpaceError(f"No embedding space is called {name!r} (see manage.py models).")
        if not space.has_model:
            raise SpaceError(f"{name} records no model, so queries cannot be embedded for it.")
        previous = next((s for s in spaces.values() if s.state == State.ACTIVE), None)
        if previous is not None and previous.pk == space.pk:
            raise SpaceError(f"{name} is already active.")
        if not space.has_index():
            raise SpaceError(f"{name} has no search index (it is being dropped?); build it again first.")
        missing = images_missing_from(space).count()
        if missing and not force:
            total = Image.objects.exclude(status=Image.Status.FAILED).count()
            raise SpaceError(f"{name} lacks {missing} of {total} image(s); wait for its build to finish "
                             f"(manage.py models) or use --force to switch anyway.")
        if previous is not None:  # first, or the new row would meet the one-active-space index
            EmbeddingSpace.objects.filter(pk=previous.pk).update(state=State.RETIRED)
        EmbeddingSpace.objects.filter(pk=space.pk).update(state=State.ACTIVE, activated_at=timezone.now(), error="")
        space.refresh_from_db()
    return Activation(space=space, previous=previous, missing=missing)


DROP_BATCH = 10_000  # vectors deleted per transaction while dropping a space


def drop(*, name: str) -> int:
    """Remove a space that does not serve searches (retired, or a build given up): its HNSW index,
    its vectors and its row. Returns how many vectors were removed.

    Searches and imports go on meanwhile: the space is retired first (builds stop, imports no
    longer embed into it, ``activate`` refuses it once its index is gone), the index is dropped
    CONCURRENTLY (a plain DROP INDEX locks the whole embedding table), and the vectors go in
    batches, each its own short transaction. Interrupted, it is safe to run again. Concurrent
    imports never fail on it: they store vectors only into spaces they find (and lock against
    deletion) in their store transaction (catalog/ingest/pipeline.py)."""
    with _graph_builds_lock(name):
        return _drop(name)


def _drop(name: str) -> int:
    with transaction.atomic():
        space = _lock_spaces().get(name)
        if space is None:
            raise SpaceError(f"No embedding space is called {name!r} (see manage.py models).")
        if space.state == State.ACTIVE:
            raise SpaceError(f"{name} is the active space; activate another one first.")
        EmbeddingSpace.objects.filter(pk=space.pk).update(state=State.RETIRED)
    with connection.cursor() as cursor:
        concurrently = "" if connection.in_atomic_block else "CONCURRENTLY "  # not allowed in a transaction
        cursor.execute(f'DROP INDEX {concurrently}IF EXISTS "{space.index_name}"')
    for graph in FilterGraph.objects.filter(space=space):  # their rows go with the space's
        graph.drop_index()
    removed = 0
    while True:
        with transaction.atomic():
            ids = list(Embedding.objects.filter(space=space).values_list("pk", flat=True)[:DROP_BATCH])
            if not ids:
                break
            removed += Embedding.objects.filter(pk__in=ids)._raw_delete(Embedding.objects.db)
    with transaction.atomic():
        space = _lock_spaces().get(name)
        if space is not None and space.state != State.ACTIVE:
            removed += Embedding.objects.filter(space=space)._raw_delete(Embedding.objects.db)  # stored meanwhile
            space.delete()
    return removed


def reindex(*, name: str) -> bool:
    """Rebuild a space's HNSW graph with the current parameters (EmbeddingSpace.HNSW_*) if it was built
    with others, CONCURRENTLY: searches and imports go on, served by the old graph until the new one
    takes its place. Safe to run again after an interruption; True when it rebuilt."""
    space = EmbeddingSpace.objects.filter(name=name).first()
    if space is None:
        raise SpaceError(f"No embedding space is called {name!r} (see manage.py models).")
    with _graph_builds_lock(name):
        return space.rebuild_index_concurrently()


@dataclass(frozen=True)
class GraphChange:
    action: str  # "built", "kept", "dropped"
    column: str
    value: str
    rows: int


def refresh_filter_graphs(*, name: str, min_rows: int | None = None, report=lambda change: None) -> list[GraphChange]:
    """Give every filter value of the space with enough rows its own graph (FilterGraph), and drop
    those whose value no longer has enough: a value gets one from ``min_rows`` rows
    (vector_search.GRAPH_MIN_ROWS: fewer are ranked exactly within ~50 ms) up to
    vector_search.GRAPH_MAX_SHARE of the space (more are walked in the space's own graph), and keeps
    it down to half of that and up to a tenth more of the space. Graphs are built CONCURRENTLY, one at a time,
    while searches and imports go on; a search uses one only once its row exists. ``report`` is
    called after each change. Interrupted, running it again goes on."""
    min_rows = vector_search.GRAPH_MIN_ROWS if min_rows is None else min_rows
    if min_rows < 1:
        raise SpaceError("A value needs at least 1 image for a graph.")
    with _graph_builds_lock(name):
        space = EmbeddingSpace.objects.filter(name=name).first()  # read under the lock: drop takes it too
        if space is None:
            raise SpaceError(f"No embedding space is called {name!r} (see manage.py models).")
        size = Embedding.objects.filter(space=space).count()
        counts = _filter_value_counts(space)
        existing = {(g.column, g.value): g for g in FilterGraph.objects.filter(space=space)}
        changes = []
        for key, graph in existing.items():
            rows = counts.get(key, 0)
            if not min_rows // 2 <= rows <= (vector_search.GRAPH_MAX_SHARE + 0.1) * size:
                graph.delete()  # searches stop choosing it (within vector_search.SPACE_SIZE_TTL) before it goes
                graph.drop_index()
                changes.append(GraphChange("dropped", *key, rows))
                report(changes[-1])
        # Blocks of years last: they only make ranges of years faster, which the years' graphs serve.
        blocks_last = sorted(counts.items(), key=lambda item: (item[0][0] == "year" and "-" in item[0][1], -item[1]))
        for (column, value), rows in blocks_last:
            graph = existing.get((column, value))
            if graph is not None and graph.pk is None:  # dropped above
                continue
            if graph is None and not min_rows <= rows <= vector_search.GRAPH_MAX_SHARE * size:
                continue
            action = "built" if graph is None else "kept"
            graph = graph or FilterGraph(space=space, column=column, value=value, rows=rows)
            graph.rows = rows
            # The row first: an index never lacks one (searches skip a row whose index is missing or
            # invalid, vector_search._graphs_of), so a failed build is simply built again next time.
            graph.save()
            graph.build_index(space)  # a no-op for a valid one; repairs one a killed build left
            changes.append(GraphChange(action, column, value, rows))
            report(changes[-1])
        # Asked for from now on: the worker refreshes them as the space grows (refresh_due_graphs).
        EmbeddingSpace.objects.filter(pk=space.pk).update(graphs_min_rows=min_rows, graphs_refreshed_rows=size)
    vector_search.forget_space(space.pk)
    return changes


GRAPH_REFRESH_CHANGE = 0.10  # of the space's rows since the last refresh, and at least half of --min-rows


def refresh_due_graphs(*, report=lambda space_name, change: None) -> dict[str, list[GraphChange]]:
    """Refresh the value graphs of each space that has them (not retired) whose size changed by
    GRAPH_REFRESH_CHANGE since their last refresh: queued by the worker when an import job finishes,
    so that a city that grew past ``--min-rows`` gets its graph without anyone running ``manage.py
    models graphs``. A space another process is refreshing is left to it. {space name: changes}."""
    refreshed = {}
    asked = EmbeddingSpace.objects.filter(graphs_refreshed_rows__isnull=False).exclude(state=EmbeddingSpace.State.RETIRED)
    for space in asked.order_by("pk"):
        size = Embedding.objects.filter(space=space).count()
        change = abs(size - space.graphs_refreshed_rows)
        if change < max(GRAPH_REFRESH_CHANGE * space.graphs_refreshed_rows, (space.graphs_min_rows or 1) / 2):
            continue
        try:
            refreshed[space.name] = refresh_filter_graphs(
                name=space.name, min_rows=space.graphs_min_rows, report=lambda change, name=space.name: report(name, change))
        except SpaceError as error:  # being refreshed by another process, or dropped meanwhile
            logger.info("value graphs of %s not refreshed: %s", space.name, error)
    return refreshed


def _filter_value_counts(space: EmbeddingSpace) -> dict[tuple[str, str], int]:
    """{(column, value): rows} of the space for the columns graphs are built on (one scan each)."""
    from django.db.models import Count
    from django.db.models.functions import ExtractYear

    rows_in = Embedding.objects.filter(space=space)
    counts = {}
    for city, rows in rows_in.exclude(city="").values_list("city").annotate(n=Count("pk")):
        counts[(FilterGraph.Column.CITY.value, city)] = rows
    for orientation, rows in rows_in.values_list("orientation").annotate(n=Count("pk")):
        counts[(FilterGraph.Column.ORIENTATION.value, str(orientation))] = rows
    # Years in UTC, as the graphs' bounds are; 9999 has no following year to bound it.
    years = (rows_in.filter(taken_at__isnull=False).annotate(year=ExtractYear("taken_at", tzinfo=dt_timezone.utc))
             .values_list("year").annotate(n=Count("pk")))
    by_year = {year: rows for year, rows in years if 1 <= year <= 9998}
    for year, rows in by_year.items():
        counts[(FilterGraph.Column.YEAR.value, f"{year:04d}")] = rows
    counts.update(_year_block_counts(by_year))
    return counts


def _year_block_counts(by_year: dict[int, int]) -> dict[tuple[str, str], int]:
    """{("year", "2016-2019"): rows} of the aligned blocks of vector_search.YEAR_BLOCKS years (a
    block starts at a multiple of its length) whose halves each hold a quarter of its rows or more:
    a block that is mostly one half would be a second graph of nearly the same rows, walked at a
    block's recall where that half's years would serve."""
    counts = {}
    for length in vector_search.YEAR_BLOCKS:
        half = length // 2
        for first in sorted({year - year % length for year in by_year}):
            last = first + length - 1
            halves = (sum(by_year.get(y, 0) for y in range(first, first + half)),
                      sum(by_year.get(y, 0) for y in range(first + half, last + 1)))
            if 1 <= first and last <= 9998 and sum(halves) and min(halves) >= sum(halves) / 4:
                counts[(FilterGraph.Column.YEAR.value, f"{first:04d}-{last:04d}")] = sum(halves)
    return counts


@contextmanager
def _graph_builds_lock(name: str):
    """One graph build (or drop) per space at a time: two CREATE INDEX CONCURRENTLY on one table
    deadlock, and a graph built while its space is dropped would outlive it."""
    # In a transaction (tests, a caller's atomic block) the lock goes with it, even if it aborts.
    scope = "_xact" if connection.in_atomic_block else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_try_advisory{scope}_lock(hashtext('catalog.graphs'), hashtext(%s))", [name])
        if not cursor.fetchone()[0]:
            raise SpaceError(f"Another process is building {name}'s graphs; run it again once it is done.")
    try:
        yield
    finally:
        if not scope:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtext('catalog.graphs'), hashtext(%s))", [name])
