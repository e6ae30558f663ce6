from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Make again, from the originals, every thumbnail that is not at the size IMAGESEARCH_THUMBNAIL_SIZE "
            "gives (run it after changing that setting). Resumable: stop it any time and run it again.")

    def add_arguments(self, parser):
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, no_progress: bool, **options):
        from catalog.derived_files import regenerate_thumbnails
        from catalog.management.progress import progress_bar
        from catalog.models import Image

        side = settings.THUMBNAIL_MAX_SIDE
        total = Image.objects.count()
        self.stdout.write(f"Checking the thumbnails of {total} image(s) against {side} px.")
        with progress_bar(total=total, enabled=not no_progress, stream=self.stderr) as bar:
            report = regenerate_thumbnails(max_side=side, on_progress=bar.update, on_failure=bar.write)
        self.stdout.write(f"Regenerated {report.regenerated}, already at {side} px "
                          f"{report.checked - report.regenerated - report.failed}, failed {report.failed}.")
        if report.failed:
            raise CommandError(f"{report.failed} thumbnail(s) could not be made; see the lines above.", returncode=1)
