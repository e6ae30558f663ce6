from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built CONCURRENTLY: on a large collection this takes a while, and imports and searches go on.
    atomic = False

    dependencies = [
        ("catalog", "0014_videos"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="image",
            index=models.Index(models.F("created_at").desc(), models.F("id").desc(), name="image_browse_added"),
        ),
        AddIndexConcurrently(
            model_name="image",
            index=models.Index(models.F("taken_at").desc(nulls_last=True), models.F("created_at").desc(),
                               models.F("id").desc(), name="image_browse_taken"),
        ),
    ]
