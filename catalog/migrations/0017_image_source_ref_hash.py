from django.contrib.postgres.indexes import HashIndex
from django.db import migrations

INDEX = "image_source_ref_hash"


def create(apps, schema_editor):
    # CONCURRENTLY: imports and searches go on meanwhile. A build killed part way leaves an invalid
    # index under this name, so such a one is dropped and built again (running this again is safe).
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [INDEX])
        row = cursor.fetchone()
        if row and not row[0]:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        cursor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON catalog_image USING hash (source_ref)")


def drop(apps, schema_editor):
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("catalog", "0016_deleted_content"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(create, drop)],
            state_operations=[migrations.AddIndex(model_name="image",
                                                  index=HashIndex(fields=["source_ref"], name=INDEX))],
        ),
    ]
