"""The database cache table (settings.CACHES["shared"]) that throttles count in, so every web process
and machine shares the counts. createcachetable skips tables that exist."""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("catalog", "0004_image_added_by_importjob_created_by_taken_at")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
