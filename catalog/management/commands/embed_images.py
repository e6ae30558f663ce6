from django.core.management.base import BaseCommand, CommandError

from catalog import spaces
from catalog.embedder import EmbedderUnavailable, get_embedder
from catalog.ingest.backfill import embed_missing, images_missing_from
from catalog.management.progress import progress_bar
from catalog.vector_search import refresh_planner_statistics


class Command(BaseCommand):
    help = ("Embed, in this process, every stored image that has no vector for the configured model (CLIP_MODEL, "
            "CLIP_PRETRAINED / CLIP_WEIGHTS_FILE): the foreground form of `manage.py models build`. A new space "
            "is left building (switch with `manage.py models activate`); resumable, and several copies may run "
            "at once.")

    def add_arguments(self, parser):
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, no_progress: bool, **options):
        try:
            embedder = get_embedder()
        except EmbedderUnavailable as error:
            raise CommandError(str(error)) from None
        space = spaces.ensure_space(config=embedder.config, dimensions=embedder.dimensions)
        total = images_missing_from(space).count()
        self.stdout.write(f"{total} image(s) to embed into {space.name}.")
        with progress_bar(total=total, enabled=not no_progress, stream=self.stderr) as bar:
            report = embed_missing(space=space, embedder=embedder, on_batch=bar.update)
        if report.embedded:
            refresh_planner_statistics()
        self.stdout.write(f"Embedded {report.embedded}, failed {report.failed}.")
        if report.failed:
            raise CommandError(f"{report.failed} image(s) could not be re-read; see their status in the admin.",
                               returncode=1)
