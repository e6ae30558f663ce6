"""Embeddings become one searchable table: half-precision unit vectors stored in the row, copies of
the image's filter columns kept by triggers (see Embedding's docstring), and per-space indexes
(HNSW over the inner product, which equals the cosine similarity of unit vectors)."""

import django.db.models.lookups
import pgvector.django.halfvec
from django.db import migrations, models

COPIED = ("city", "width", "height", "taken_at", "group_key")

CREATE_TRIGGERS = f"""
CREATE FUNCTION catalog_embedding_copy_image_columns() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- FOR SHARE: an image update running beside this insert waits for it (or it for the update),
    -- so the refresh trigger below sees this row; without it the copy could keep the old value.
    SELECT i.city, i.width, i.height, i.taken_at, i.group_key
      INTO NEW.city, NEW.width, NEW.height, NEW.taken_at, NEW.group_key
      FROM catalog_image i WHERE i.id = NEW.image_id FOR SHARE;
    RETURN NEW;  -- no such image: the deferred foreign key reports it at commit
END $$;
CREATE TRIGGER catalog_embedding_copy_image_columns BEFORE INSERT OR UPDATE ON catalog_embedding
    FOR EACH ROW EXECUTE FUNCTION catalog_embedding_copy_image_columns();

CREATE FUNCTION catalog_image_refresh_embedding_copies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The embedding's BEFORE UPDATE trigger copies every column again from the updated image.
    UPDATE catalog_embedding SET image_id = NEW.id WHERE image_id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER catalog_image_refresh_embedding_copies AFTER UPDATE OF {", ".join(COPIED)} ON catalog_image
    FOR EACH ROW WHEN (({", ".join("OLD." + c for c in COPIED)}) IS DISTINCT FROM ({", ".join("NEW." + c for c in COPIED)}))
    EXECUTE FUNCTION catalog_image_refresh_embedding_copies();
"""

DROP_TRIGGERS = """
DROP TRIGGER catalog_image_refresh_embedding_copies ON catalog_image;
DROP FUNCTION catalog_image_refresh_embedding_copies();
DROP TRIGGER catalog_embedding_copy_image_columns ON catalog_embedding;
DROP FUNCTION catalog_embedding_copy_image_columns();
"""


def _hnsw_indexes(apps, schema_editor, *, opclass: str, cast: str, params: str):
    EmbeddingSpace = apps.get_model("catalog", "EmbeddingSpace")
    for space in EmbeddingSpace.objects.using(schema_editor.connection.alias).order_by("pk"):
        name = f"catalog_embedding_hnsw_{space.pk}"
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
        if opclass:
            schema_editor.execute(
                f"CREATE INDEX {name} ON catalog_embedding USING hnsw ((vector::{cast}({space.dimensions})) {opclass}) "
                f"WITH ({params}) WHERE space_id = {space.pk}")


def drop_hnsw(apps, schema_editor):
    _hnsw_indexes(apps, schema_editor, opclass="", cast="", params="")


def create_halfvec_hnsw(apps, schema_editor):
    # The same definition as EmbeddingSpace.hnsw_index() (m, ef_construction) at the time of writing.
    _hnsw_indexes(apps, schema_editor, opclass="halfvec_ip_ops", cast="halfvec", params="m = 16, ef_construction = 128")


def create_vector_hnsw(apps, schema_editor):
    _hnsw_indexes(apps, schema_editor, opclass="vector_cosine_ops", cast="vector", params="m = 16, ef_construction = 64")


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0005_shared_cache_table'),
    ]

    operations = [
        # The old indexes cover vector::vector(n); rebuilding them through the type change is wasted work.
        migrations.RunPython(drop_hnsw, create_vector_hnsw),
        migrations.AlterField(
            model_name='embedding',
            name='vector',
            field=pgvector.django.halfvec.HalfVectorField(),
        ),
        # Kept in the row: an exact scan then never reads TOAST (a 2,000-d halfvec still fits a page).
        migrations.RunSQL("ALTER TABLE catalog_embedding ALTER COLUMN vector SET STORAGE PLAIN",
                          "ALTER TABLE catalog_embedding ALTER COLUMN vector SET STORAGE EXTERNAL"),
        migrations.AddConstraint(
            model_name='embedding',
            constraint=models.CheckConstraint(condition=models.Q(django.db.models.lookups.GreaterThan(models.Func(models.F('vector'), function='l2_norm', output_field=models.FloatField()), 0.99), django.db.models.lookups.LessThan(models.Func(models.F('vector'), function='l2_norm', output_field=models.FloatField()), 1.01)), name='embedding_unit_vector'),
        ),
        migrations.AddField(
            model_name='embedding',
            name='city',
            field=models.CharField(default='', editable=False, max_length=120),
        ),
        migrations.AddField(
            model_name='embedding',
            name='width',
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name='embedding',
            name='height',
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name='embedding',
            name='taken_at',
            field=models.DateTimeField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name='embedding',
            name='group_key',
            field=models.CharField(default='', editable=False, max_length=120),
        ),
        migrations.AddField(
            model_name='embedding',
            name='orientation',
            field=models.GeneratedField(db_persist=True, expression=models.Case(models.When(then=models.Value(1), width__gt=models.F('height')), models.When(then=models.Value(-1), width__lt=models.F('height')), default=models.Value(0)), output_field=models.SmallIntegerField(choices=[(-1, 'Portrait'), (0, 'Square'), (1, 'Landscape')])),
        ),
        migrations.RunSQL(CREATE_TRIGGERS, DROP_TRIGGERS),
        # Existing rows: touching each one makes the BEFORE UPDATE trigger copy its image's values.
        # Immediate: otherwise the update's deferred foreign-key checks block the CREATE INDEX below.
        migrations.RunSQL("SET CONSTRAINTS ALL IMMEDIATE; UPDATE catalog_embedding SET image_id = image_id; "
                          "SET CONSTRAINTS ALL DEFERRED", migrations.RunSQL.noop),
        migrations.AddIndex(
            model_name='embedding',
            index=models.Index(fields=['space', 'city'], include=('image', 'width', 'height', 'taken_at', 'orientation'), name='embedding_space_city'),
        ),
        migrations.AddIndex(
            model_name='embedding',
            index=models.Index(fields=['space', 'width'], include=('image', 'city', 'height', 'taken_at', 'orientation'), name='embedding_space_width'),
        ),
        migrations.AddIndex(
            model_name='embedding',
            index=models.Index(fields=['space', 'height'], include=('image', 'city', 'width', 'taken_at', 'orientation'), name='embedding_space_height'),
        ),
        migrations.AddIndex(
            model_name='embedding',
            index=models.Index(fields=['space', 'taken_at'], include=('image', 'city', 'width', 'height', 'orientation'), name='embedding_space_taken_at'),
        ),
        migrations.AddIndex(
            model_name='embedding',
            index=models.Index(fields=['space', 'orientation'], include=('image', 'city', 'width', 'height', 'taken_at'), name='embedding_space_orientation'),
        ),
        migrations.RunPython(create_halfvec_hnsw, drop_hnsw),
    ]
