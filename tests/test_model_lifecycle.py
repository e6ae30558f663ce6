"""The model lifecycle: the active space is data; build beside it, switch in one step, drop."""

import io
import threading
import time

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction

from catalog import spaces
from catalog.jobs import builds
from catalog.models import Embedding, EmbeddingSpace
from catalog.search import SearchParams, images_search
from tests.conftest import ingest_pictures, varied_picture

pytestmark = pytest.mark.django_db

ALT = "ViT-S-32-alt"  # 256-d, small: another model than the tests' ViT-S-32 (384-d)
ALT_SPACE = f"{ALT}/random-init"
NO_SCHEDULE = builds.BuildScheduler(enqueue=lambda *args, **kwargs: None, has_waiting=lambda *args, **kwargs: True,
                                    invite=lambda *args: None)


def models(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("models", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def build(architecture: str) -> EmbeddingSpace:
    """Start a build and run it to the end, as the workers would."""
    space = builds.start_build(architecture=architecture, pretrained="any", enqueue=lambda space_id: None)
    while builds.run_build(space.pk, scheduler=NO_SCHEDULE) == "continued":
        pass
    return space


def index_exists(space: EmbeddingSpace) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", [space.index_name])
        return cursor.fetchone()[0] == 1


def test_the_first_import_makes_the_configured_models_space_active():
    ingest_pictures([("a.png", varied_picture(1))])
    active = spaces.active_space()
    assert active.name == "ViT-S-32/random-init" and active.dimensions == 384
    assert (active.architecture, active.random_init) == ("ViT-S-32", True)


def test_the_database_allows_one_active_space_only():
    ingest_pictures([("a.png", varied_picture(1))])
    other = EmbeddingSpace.objects.create(name="test/other", dimensions=8)
    with pytest.raises(IntegrityError), transaction.atomic():
        EmbeddingSpace.objects.filter(pk=other.pk).update(state=EmbeddingSpace.State.ACTIVE)


@pytest.mark.slow
def test_build_lists_progress_then_activate_switches_searches_to_the_new_dimensions():
    ingest_pictures([(f"p{i}.png", varied_picture(i)) for i in range(3)])
    out, _ = models("build", ALT, "any")
    assert f"Building {ALT_SPACE} (256-d): 3 image(s) to embed" in out
    listing, _ = models()
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert "100.0%" in rows["ViT-S-32/random-init"] and rows["ViT-S-32/random-init"].endswith("active")
    assert "0.0%" in rows[ALT_SPACE] and rows[ALT_SPACE].endswith("building")

    with pytest.raises(CommandError, match="lacks 3 of 3"):
        models("activate", ALT_SPACE)
    space = EmbeddingSpace.objects.get(name=ALT_SPACE)
    assert builds.run_build(space.pk, scheduler=NO_SCHEDULE) == "done"
    listing, _ = models("list")
    assert "100.0%" in next(line for line in listing.splitlines() if line.startswith(ALT_SPACE))

    out, _ = models("activate", ALT_SPACE)
    assert "Searches now use ViT-S-32-alt/random-init (was ViT-S-32/random-init, now retired)." in out
    results = images_search(params=SearchParams(text="a dog", top_k=3))
    assert len(results.hits) == 3
    query = spaces.embedder_for(space).embed_text("a dog")
    assert len(query) == 256
    stored = dict(Embedding.objects.filter(space=space).values_list("image_id", "vector"))
    for hit in results.hits:  # the new space's vectors, compared with the new model's query
        assert hit.score == pytest.approx(float(np.dot(query, np.asarray(stored[hit.image.pk]))), abs=5e-3)


def test_activate_force_switches_and_lists_what_is_missing():
    images = ingest_pictures([(f"f{i}.png", varied_picture(i)) for i in range(2)])
    models("build", ALT, "any")
    out, err = models("activate", ALT_SPACE, "--force")
    assert "Searches now use" in out
    assert "2 image(s) have no vector" in err and f"missing: image {images[0].pk} f0.png" in err
    assert spaces.active_space().name == ALT_SPACE
    models("build", ALT, "any")  # fills in the active space, which stays active
    assert builds.run_build(spaces.active_space().pk, scheduler=NO_SCHEDULE) == "done"
    assert spaces.active_space().name == ALT_SPACE and not spaces.images_missing_from(spaces.active_space()).exists()
    assert len(images_search(params=SearchParams(text="a boat", top_k=5)).hits) == 2


def test_build_refuses_a_model_that_cannot_load():
    with pytest.raises(CommandError, match="not an open_clip architecture"):
        models("build", "No-Such-Model", "x")
    with pytest.raises(CommandError, match="does not exist"):
        models("build", ALT, "--weights", "/nonexistent/weights.bin")
    assert not EmbeddingSpace.objects.exists()


@pytest.mark.slow
def test_images_imported_during_a_build_end_in_both_spaces():
    old = ingest_pictures([(f"o{i}.png", varied_picture(i)) for i in range(2)])
    active = spaces.active_space()
    space = builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)
    new = ingest_pictures([(f"n{i}.png", varied_picture(10 + i)) for i in range(3)])
    for image in new:
        assert set(image.embeddings.values_list("space_id", flat=True)) == {active.pk, space.pk}
    assert set(spaces.images_missing_from(space)) == set(old)  # those are left to the build job
    assert builds.run_build(space.pk, scheduler=NO_SCHEDULE) == "done"
    assert not spaces.images_missing_from(space).exists()
    assert Embedding.objects.filter(space=space).count() == 5


@pytest.mark.slow
def test_drop_removes_a_retired_spaces_vectors_and_index_never_the_active_one():
    ingest_pictures([(f"d{i}.png", varied_picture(i)) for i in range(2)])
    old = spaces.active_space()
    build(ALT)
    models("activate", ALT_SPACE)
    assert index_exists(old) and Embedding.objects.filter(space=old).count() == 2

    with pytest.raises(CommandError, match="is the active space"):
        models("drop", ALT_SPACE)
    out, _ = models("drop", old.name)
    assert f"Dropped {old.name}: 2 vector(s)" in out
    assert not index_exists(old)
    assert not Embedding.objects.filter(space_id=old.pk).exists()
    assert not EmbeddingSpace.objects.filter(pk=old.pk).exists()
    assert len(images_search(params=SearchParams(text="a cat", top_k=5)).hits) == 2
    with pytest.raises(CommandError, match="No embedding space"):
        models("drop", old.name)


def test_spaces_api_shows_state_and_coverage(client):
    ingest_pictures([("s.png", varied_picture(1))])
    builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)
    from tests.conftest import make_user

    client.force_login(make_user("reader"))
    body = client.get("/api/spaces/").json()
    assert [(s["name"], s["state"], s["coverage"], s["missing"]) for s in body] == [
        ("ViT-S-32/random-init", "active", 100.0, 0), (ALT_SPACE, "building", 0.0, 1)]
    assert body[1]["dimensions"] == 256 and body[0]["index_bytes"] > 0


def test_admin_lists_coverage_and_its_action_activates_only_a_complete_space(admin_client):
    ingest_pictures([(f"a{i}.png", varied_picture(i)) for i in range(2)])
    space = builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)
    page = admin_client.get("/admin/catalog/embeddingspace/").content.decode()
    assert "0.0% (2 missing)" in page and "100.0%" in page

    def activate_action():
        return admin_client.post("/admin/catalog/embeddingspace/", {
            "action": "activate", "_selected_action": [space.pk]}, follow=True).content.decode()

    assert "lacks 2 of 2 image(s)" in activate_action()
    assert spaces.active_space().pk != space.pk
    builds.run_build(space.pk, scheduler=NO_SCHEDULE)
    assert f"Searches now use {ALT_SPACE}." in activate_action()
    assert spaces.active_space().pk == space.pk


def test_resuming_a_known_spaces_build_does_not_load_its_model_in_the_request(admin_client, monkeypatch):
    space = builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)

    def no_loading(config):
        raise AssertionError("the model was loaded in the web request")

    monkeypatch.setattr(builds, "get_embedder", no_loading)
    page = admin_client.post("/admin/catalog/embeddingspace/", {
        "action": "resume_build", "_selected_action": [space.pk]}, follow=True).content.decode()
    assert f"{ALT_SPACE} is building." in page
    with pytest.raises(AssertionError, match="loaded in the web request"):  # a new space still loads it
        builds.start_build(architecture="ViT-B-32", pretrained="any", enqueue=lambda space_id: None)


def test_building_again_repairs_an_index_that_a_killed_concurrent_build_left_invalid():
    space = builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)
    with connection.cursor() as cursor:  # what a CREATE INDEX CONCURRENTLY cut short leaves behind
        cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(%s)", [space.index_name])
    assert space.index_exists() and not space.has_index()
    builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)
    assert space.has_index()


def test_resume_queues_builds_that_lost_their_task_and_only_those():
    ingest_pictures([("r.png", varied_picture(1))])
    space = builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)
    queued = []
    lost = builds.BuildScheduler(enqueue=lambda space_id, **kwargs: queued.append(space_id),
                                 has_waiting=lambda *args, **kwargs: False, invite=lambda *args: None)
    assert builds.resume_builds(scheduler=lost) == [space.pk] and queued == [space.pk]
    assert builds.resume_builds(scheduler=NO_SCHEDULE) == []  # a task waits already
    builds.run_build(space.pk, scheduler=NO_SCHEDULE)
    assert builds.resume_builds(scheduler=lost) == []  # nothing missing: nothing to queue


def test_searches_while_a_space_builds_load_its_model_in_the_background(monkeypatch):
    from catalog import embedder

    ingest_pictures([("w.png", varied_picture(1))])
    space = builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)
    config = embedder.EmbedderConfig.for_space(space)
    monkeypatch.setattr(embedder, "_embedders", embedder.OrderedDict())  # as in a web process
    assert not embedder.is_loaded(config)
    assert len(images_search(params=SearchParams(text="a tree", top_k=1)).hits) == 1  # from the active space
    deadline = time.monotonic() + 60
    while not embedder.is_loaded(config):
        assert time.monotonic() < deadline, "the building space's model was never loaded"
        time.sleep(0.05)


def _ranking(space: EmbeddingSpace, text: str) -> tuple[list[int], np.ndarray]:
    """Image ids and scores of every image in ``space``, best first, computed here."""
    query = spaces.embedder_for(space).embed_text(text)
    rows = list(Embedding.objects.filter(space=space).values_list("image_id", "vector"))
    scores = np.array([float(np.dot(query, np.asarray(vector))) for _, vector in rows])
    order = np.argsort(-scores, kind="stable")
    return [rows[i][0] for i in order], scores[order]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_switch_while_a_client_searches_never_fails_empties_or_mixes_spaces():
    """ViT-S-32 (384-d) to ViT-B-32 (512-d), random weights, while a thread searches in a loop."""
    ingest_pictures([(f"w{i}.png", varied_picture(i)) for i in range(6)])
    old = spaces.active_space()
    new = build("ViT-B-32")
    assert (old.dimensions, new.dimensions) == (384, 512)
    text = "a red bicycle"
    expected = {old.pk: _ranking(old, text), new.pk: _ranking(new, text)}
    assert not np.allclose(expected[old.pk][1], expected[new.pk][1], atol=5e-3)  # the spaces are told apart

    seen: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def client():
        try:
            while not stop.is_set():
                try:
                    hits = images_search(params=SearchParams(text=text, top_k=6)).hits
                except Exception as error:  # noqa: BLE001 - every failure is the test's finding
                    failures.append(f"search failed: {error!r}")
                    continue
                ids, scores = [hit.image.pk for hit in hits], np.array([hit.score for hit in hits])
                match = [pk for pk, (want_ids, want_scores) in expected.items()
                         if len(hits) == 6 and np.allclose(scores, want_scores, atol=5e-3)
                         and set(ids) == set(want_ids)]
                if len(match) != 1:
                    failures.append(f"result of no single space: {ids} {scores}")
                else:
                    seen.append(match[0])
        finally:
            connection.close()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(seen) < 3 and time.monotonic() < deadline and not failures:
            time.sleep(0.05)
        before = len(seen)  # searches finished before the switch began
        spaces.activate(name=new.name)
        while (seen.count(new.pk) < 3) and time.monotonic() < deadline and not failures:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures[:3]
    assert before >= 3 and set(seen[:before]) == {old.pk} and seen.count(new.pk) >= 3
    # Never back: once a search has seen the new space, every later one does.
    first_new = seen.index(new.pk)
    assert set(seen[first_new:]) == {new.pk}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_migration_makes_the_configured_models_space_active_and_reads_models_from_names():
    from django.db.migrations.executor import MigrationExecutor

    def migrate(target):
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate([target] if target else executor.loader.graph.leaf_nodes())

    migrate(("catalog", "0007_import_item_claims"))
    try:
        with connection.cursor() as cursor:
            for name, dims in (("ViT-B-32/laion2b_s34b_b79k", 512), ("ViT-S-32/random-init", 384), ("bench data", 8)):
                cursor.execute("INSERT INTO catalog_embeddingspace (name, dimensions, created_at) VALUES (%s, %s, now())",
                               [name, dims])
    finally:
        migrate(None)
    found = {space.name: space for space in EmbeddingSpace.objects.all()}
    assert {name: space.state for name, space in found.items()} == {
        "ViT-B-32/laion2b_s34b_b79k": "retired", "ViT-S-32/random-init": "active", "bench data": "retired"}
    assert (found["ViT-B-32/laion2b_s34b_b79k"].architecture, found["ViT-B-32/laion2b_s34b_b79k"].pretrained) == \
        ("ViT-B-32", "laion2b_s34b_b79k")
    assert found["ViT-S-32/random-init"].random_init and not found["bench data"].has_model


def test_a_storage_error_during_a_build_keeps_the_image_and_the_build_finishes_later(monkeypatch):
    from django.core.files.storage import default_storage

    from catalog.models import Image

    ingest_pictures([(f"e{i}.png", varied_picture(i)) for i in range(3)])
    space = builds.start_build(architecture=ALT, pretrained="any", enqueue=lambda space_id: None)
    real_open = default_storage.open
    flaky = {"left": 1}

    def open_once_broken(name, mode="rb"):
        if flaky["left"]:
            flaky["left"] -= 1
            raise ConnectionResetError("storage went away")  # an OSError, not a missing file
        return real_open(name, mode)

    monkeypatch.setattr(default_storage, "open", open_once_broken)
    with pytest.raises(OSError, match="storage went away"):
        builds.run_build(space.pk, scheduler=NO_SCHEDULE)
    assert not Image.objects.filter(status=Image.Status.FAILED).exists()  # no image lost to a hiccup

    assert builds.run_build(space.pk, scheduler=NO_SCHEDULE) == "done"  # the watch's retry
    assert Embedding.objects.filter(space=space).count() == 3


def test_an_import_that_runs_across_a_switch_also_embeds_into_the_new_active_space():
    from catalog.ingest.pipeline import IngestItem, IngestOptions, ingest_items
    from catalog.models import Image

    ingest_pictures([("f0.png", varied_picture(0))])
    alt = build(ALT)
    switched = []

    def items():
        for i in range(1, 7):
            if i == 4:  # half-way through the import
                spaces.activate(name=ALT_SPACE)
                switched.append(True)
            yield IngestItem.from_bytes(f"f{i}.png", varied_picture(i))

    report = ingest_items(items(), options=IngestOptions(source=Image.Source.UPLOAD), decode_workers=1)
    assert switched and report.added == 6
    assert Embedding.objects.filter(space=alt).count() == 7  # every image is searchable after the switch


def test_a_different_weights_file_of_the_same_name_never_adds_to_a_space(tmp_path):
    first, second = tmp_path / "v1" / "model.bin", tmp_path / "ft" / "model.bin"
    for path, content in ((first, b"v1" * 1000), (second, b"ft" * 1000)):
        path.parent.mkdir()
        path.write_bytes(content)
    space = spaces.ensure_space(config=spaces.config_for(architecture=ALT, weights_file=first), dimensions=256)
    assert spaces.ensure_space(config=spaces.config_for(architecture=ALT, weights_file=first), dimensions=256) == space

    with pytest.raises(spaces.SpaceError, match="a different file"):
        spaces.ensure_space(config=spaces.config_for(architecture=ALT, weights_file=second), dimensions=256)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_dropping_a_space_never_blocks_searches_of_the_active_one():
    from django.db import connections

    ingest_pictures([(f"g{i}.png", varied_picture(i)) for i in range(2)])
    alt = build(ALT)  # building: droppable
    reading, release = threading.Event(), threading.Event()

    def long_reader():  # an open transaction that has read the table, as a slow search or a backup has
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM catalog_embedding")
                reading.set()
                release.wait(30)
        finally:
            connections.close_all()

    def dropper():
        try:
            spaces.drop(name=ALT_SPACE)
        finally:
            connections.close_all()

    reader = threading.Thread(target=long_reader)
    reader.start()
    assert reading.wait(10)
    drop = threading.Thread(target=dropper)
    drop.start()
    time.sleep(1)  # the drop is waiting for the reader now
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '3s'")  # a plain DROP INDEX queued ahead would make this time out
    try:
        assert len(images_search(params=SearchParams(text="a cat", top_k=5)).hits) == 2
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        release.set()
        reader.join(30)
        drop.join(60)
    assert not index_exists(alt) and not EmbeddingSpace.objects.filter(pk=alt.pk).exists()
    assert not Embedding.objects.filter(space_id=alt.pk).exists()


def _rebuild_as(space: EmbeddingSpace, *, m: int, ef_construction: int) -> None:
    """Make the space's graph one built with other parameters (as an older release did)."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the test's transaction: pending FK checks block DDL
        cursor.execute(f'DROP INDEX "{space.index_name}"')
        cursor.execute(f'CREATE INDEX "{space.index_name}" ON catalog_embedding USING hnsw '
                       f'((vector::halfvec({space.dimensions})) halfvec_ip_ops) '
                       f"WITH (m = {m}, ef_construction = {ef_construction}) WHERE space_id = {space.pk}")


def test_reindex_rebuilds_an_older_graph_with_the_current_parameters_and_searches_go_on():
    ingest_pictures([(f"p{i}.png", varied_picture(i)) for i in range(4)])
    space = spaces.active_space()
    current = (EmbeddingSpace.HNSW_M, EmbeddingSpace.HNSW_EF_CONSTRUCTION)
    assert space.graph_parameters() == current  # a new space's graph is built with them
    _rebuild_as(space, m=16, ef_construction=128)
    listing, _ = models("list")
    assert "m=16 ef_construction=128 (older: models reindex)" in listing
    before = [hit.image.pk for hit in images_search(params=SearchParams(text="a dog", top_k=4)).hits]

    out, _ = models("reindex", space.name)
    assert f"{space.name}: graph rebuilt (m={current[0]}, ef_construction={current[1]})." in out
    assert space.graph_parameters() == current and space.has_index()
    with connection.cursor() as cursor:  # the temporary graph is gone: one index serves the space
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE indexname LIKE %s", [f"{space.index_name}%"])
        assert cursor.fetchone()[0] == 1
    assert [hit.image.pk for hit in images_search(params=SearchParams(text="a dog", top_k=4)).hits] == before
    out, _ = models("reindex", space.name)
    assert "the graph already has" in out
    with pytest.raises(CommandError, match="No embedding space"):
        models("reindex", "no/such-space")


def test_reindex_goes_on_after_an_interrupted_run():
    ingest_pictures([("a.png", varied_picture(1))])
    space = spaces.active_space()
    _rebuild_as(space, m=16, ef_construction=128)
    with connection.cursor() as cursor:  # killed while building the new graph: an invalid one is left
        cursor.execute(f'CREATE INDEX "{space.index_name}_next" ON catalog_embedding USING hnsw '
                       f"((vector::halfvec({space.dimensions})) halfvec_ip_ops) WHERE space_id = {space.pk}")
        cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(%s)",
                       [f"{space.index_name}_next"])
    assert spaces.reindex(name=space.name) is True
    assert space.graph_parameters() == (EmbeddingSpace.HNSW_M, EmbeddingSpace.HNSW_EF_CONSTRUCTION)
    assert space.has_index()


def test_reindex_refuses_while_another_process_builds_the_spaces_graphs():
    from django.db import connections

    ingest_pictures([("a.png", varied_picture(1))])
    space = spaces.active_space()
    _rebuild_as(space, m=16, ef_construction=128)
    other = connections.create_connection("default")  # another process's session
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtext('catalog.graphs'), hashtext(%s))", [space.name])
        with pytest.raises(CommandError, match="Another process is building"):
            models("reindex", space.name)
        assert space.graph_parameters() == (16, 128)  # untouched
    finally:
        other.close()
    assert spaces.reindex(name=space.name) is True


def test_drop_refuses_while_another_process_builds_the_spaces_graphs():
    from django.db import connections

    space = EmbeddingSpace.objects.ensure(name="test/dropped-with-graphs", dimensions=8)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtext('catalog.graphs'), hashtext(%s))", [space.name])
        with pytest.raises(spaces.SpaceError, match="Another process is building"):
            spaces.drop(name=space.name)
        assert EmbeddingSpace.objects.filter(pk=space.pk).exists()
    finally:
        other.close()
    spaces.drop(name=space.name)
    assert not EmbeddingSpace.objects.filter(pk=space.pk).exists()
