from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from catalog.management.commands.import_images import import_paths
from catalog.models import Image

# Real photographs that ship inside the scikit-image wheel (no download).
# Its synthetic test patterns and microscopy scans are left out.
SAMPLE_PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "camera.png",
    "coins.png", "moon.png", "motorcycle_left.png", "grass.png", "gravel.png", "brick.png", "horse.png",
    "retina.jpg", "page.png", "text.png", "color.png", "logo.png",
]


def sample_photo_paths() -> list[Path]:
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]


class Command(BaseCommand):
    help = "Import the sample photographs bundled with scikit-image, so a new install has something to search."

    def add_arguments(self, parser):
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, no_progress: bool, **options):
        paths = sample_photo_paths()
        if not paths:
            raise CommandError("scikit-image's sample photographs were not found; is scikit-image installed?")
        # Run at every start (bin/serve): a sample photo deleted in the app stays deleted.
        report = import_paths(self, paths, root=paths[0].parent, source=Image.Source.SAMPLE,
                              show_progress=not no_progress, skip_deleted=True)
        if report.failed:
            raise CommandError(f"{len(report.failed)} sample file(s) failed.", returncode=1)
