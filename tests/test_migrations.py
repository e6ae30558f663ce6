"""Migrations on a database that already holds a collection, not only on an empty one."""

import numpy as np
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import F, Q

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BEFORE_SEARCH_TABLE = ("catalog", "0005_shared_cache_table")
ROWS, DIMS = 300, 16


def _migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target] if target else executor.loader.graph.leaf_nodes())


def test_embeddings_of_the_old_schema_become_searchable_rows_with_their_images_columns():
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((ROWS, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cities = ["Paris", "Lima", ""]
    _migrate(BEFORE_SEARCH_TABLE)
    try:
        with connection.cursor() as cursor:
            # The schema of 0005: a float vector column and the old per-space index.
            cursor.execute("INSERT INTO catalog_embeddingspace (name, dimensions, created_at) "
                           "VALUES ('old/space', %s, now()) RETURNING id", [DIMS])
            space_id = cursor.fetchone()[0]
            for i in range(ROWS):
                cursor.execute(
                    "INSERT INTO catalog_image (file, thumbnail, sha256, original_name, width, height, city, group_key, "
                    "taken_at, source, source_ref, created_at, status, status_reason) VALUES (%s, '', %s, '', %s, %s, "
                    "%s, %s, now(), 'upload', '', now(), 'embedded', '') RETURNING id",
                    [f"old/{i}.jpg", f"{i:064x}", 100 + i % 7, 100 + i % 5, cities[i % 3], f"g{i // 3}"])
                cursor.execute("INSERT INTO catalog_embedding (vector, created_at, space_id, image_id) "
                               "VALUES (%s::vector, now(), %s, %s)",
                               ["[" + ",".join(map(str, vectors[i].tolist())) + "]", space_id, cursor.fetchone()[0]])
            cursor.execute(f"CREATE INDEX catalog_embedding_hnsw_{space_id} ON catalog_embedding USING hnsw "
                           f"((vector::vector({DIMS})) vector_cosine_ops) WHERE space_id = {space_id}")
    finally:
        _migrate(None)  # forward to the latest, data and all

    from catalog.models import Embedding, EmbeddingSpace
    from catalog.vector_search import nearest

    space = EmbeddingSpace.objects.get(pk=space_id)
    stale = (Embedding.objects.filter(space=space).exclude(city=F("image__city"))
             | Embedding.objects.filter(space=space).exclude(width=F("image__width")))
    assert Embedding.objects.filter(space=space).count() == ROWS and not stale.exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [space.index_name])
        assert "halfvec_ip_ops" in cursor.fetchone()[0]
    found = nearest(space=space, vector=vectors[0], image_filter=Q(city="Paris"), offset=0, limit=5)
    assert found[0].distance == pytest.approx(0.0, abs=1e-3)  # image 0 is in Paris: its own vector first


def test_going_back_before_year_blocks_drops_the_blocks_graphs_and_keeps_the_years():
    from catalog.models import EmbeddingSpace, FilterGraph

    space = EmbeddingSpace.objects.create(name="test/blocks-back", dimensions=8)
    graphs = [FilterGraph.objects.create(space=space, column="year", value=value, rows=1)
              for value in ("2016", "2016-2019")]
    names = [graph.index_name for graph in graphs]

    def index_exists(name):
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:  # stand-ins for the graphs' indexes: only their names matter here
        for name in names:
            cursor.execute(f'CREATE INDEX "{name}" ON catalog_embedding (id) WHERE space_id = {space.pk}')
    try:
        _migrate(("catalog", "0018_filter_graphs"))
        with connection.cursor() as cursor:
            cursor.execute("SELECT value FROM catalog_filtergraph WHERE space_id = %s", [space.pk])
            assert [value for (value,) in cursor.fetchall()] == ["2016"]
        assert index_exists(names[0]) and not index_exists(names[1])
    finally:
        _migrate(None)
        with connection.cursor() as cursor:
            cursor.execute(f'DROP INDEX IF EXISTS "{names[0]}"')


def test_spaces_that_have_value_graphs_are_refreshed_from_the_migration_on():
    from catalog.models import EmbeddingSpace

    _migrate(("catalog", "0019_year_block_graphs"))
    try:
        with connection.cursor() as cursor:  # the schema of 0019: no refresh columns yet
            ids = []
            for name in ("test/with-graphs", "test/without"):
                cursor.execute("INSERT INTO catalog_embeddingspace (name, dimensions, created_at, state, architecture, "
                               "pretrained, weights_file, random_init, error) "
                               "VALUES (%s, 8, now(), 'retired', '', '', '', false, '') RETURNING id", [name])
                ids.append(cursor.fetchone()[0])
            cursor.execute("INSERT INTO catalog_filtergraph (space_id, \"column\", value, rows, created_at) "
                           "VALUES (%s, 'city', 'Lima', 1, now())", [ids[0]])
        _migrate(None)
        spaces = {space.name: (space.graphs_min_rows, space.graphs_refreshed_rows)
                  for space in EmbeddingSpace.objects.filter(pk__in=ids)}
        assert spaces == {"test/with-graphs": (15_000, 0), "test/without": (None, None)}
    finally:
        _migrate(None)
        EmbeddingSpace.objects.filter(name__in=["test/with-graphs", "test/without"]).delete()
