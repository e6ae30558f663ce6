"""Embedding spaces get a lifecycle state (at most one active) and their model's identity.

Existing installs: each space's model is read back from its name ("<architecture>/<weights>"), and
the space of the configured model (CLIP_MODEL ...), or else the only space, becomes active."""

from django.db import migrations, models


def _identity(name: str) -> dict:
    architecture, _, weights = name.partition("/")
    if not architecture or not weights or " " in architecture:
        return {}  # not a model's space (e.g. benchmark data): it can serve, but not be embedded into
    if weights == "random-init":
        return {"architecture": architecture, "random_init": True}
    if weights.startswith("file:"):
        from django.conf import settings

        configured = getattr(settings, "CLIP_WEIGHTS_FILE", None)
        if configured is None or configured.name != weights[len("file:"):]:
            return {}  # the file's folder is not recorded in the name
        return {"architecture": architecture, "weights_file": str(configured)}
    return {"architecture": architecture, "pretrained": weights}


def _configured_space_name():
    """The configured model's space name, as catalog.embedder.EmbedderConfig.space_name made it
    when this migration was written (a copy: a migration must not change with the app's code)."""
    from django.conf import settings

    model = getattr(settings, "CLIP_MODEL", None)
    if model is None:  # settings without the CLIP ones (e.g. a bare test project)
        return None
    if settings.CLIP_RANDOM_INIT:
        weights = "random-init"
    elif settings.CLIP_WEIGHTS_FILE is not None:
        weights = f"file:{settings.CLIP_WEIGHTS_FILE.name}"
    else:
        weights = settings.CLIP_PRETRAINED or "untrained"
    return f"{model}/{weights}"


def forwards(apps, schema_editor):
    EmbeddingSpace = apps.get_model("catalog", "EmbeddingSpace")
    spaces = list(EmbeddingSpace.objects.using(schema_editor.connection.alias).order_by("pk"))
    for space in spaces:
        for field, value in _identity(space.name).items():
            setattr(space, field, value)
        space.save()
    configured = _configured_space_name()
    active = next((space for space in spaces if space.name == configured), None)
    if active is None and len(spaces) == 1:
        active = spaces[0]
    if active is not None:
        active.state = "active"
        active.save(update_fields=["state"])


class Migration(migrations.Migration):

    dependencies = [
        ("catalog", "0008_evaluation_runs"),
    ]

    operations = [
        migrations.AddField(
            model_name="embeddingspace",
            name="state",
            field=models.CharField(choices=[("building", "Building"), ("active", "Active"), ("retired", "Retired")],
                                   default="retired", max_length=16),
        ),
        migrations.AddField(
            model_name="embeddingspace",
            name="architecture",
            field=models.CharField(blank=True, help_text="open_clip architecture.", max_length=255),
        ),
        migrations.AddField(
            model_name="embeddingspace",
            name="pretrained",
            field=models.CharField(blank=True, help_text="open_clip pretrained tag.", max_length=255),
        ),
        migrations.AddField(
            model_name="embeddingspace",
            name="weights_file",
            field=models.CharField(blank=True, help_text="Local weights file (takes precedence over the tag).",
                                   max_length=1000),
        ),
        migrations.AddField(
            model_name="embeddingspace",
            name="random_init",
            field=models.BooleanField(default=False, help_text="Random weights (tests only)."),
        ),
        migrations.AddField(
            model_name="embeddingspace",
            name="error",
            field=models.TextField(blank=True, help_text="Why the last build run stopped, if it failed."),
        ),
        migrations.AddField(
            model_name="embeddingspace",
            name="activated_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddConstraint(
            model_name="embeddingspace",
            constraint=models.UniqueConstraint(condition=models.Q(("state", "active")), fields=("state",),
                                               name="one_active_space"),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
