from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from catalog.embedder import EmbedderUnavailable
from catalog.spaces import active_space_and_model
from catalog.ingest.pipeline import IngestOptions, ItemOutcome, ingest_items
from catalog.ingest.names import safe_text
from catalog.ingest.sources import folder_listing, looks_like_image, path_items
from catalog.management.progress import progress_bar
from catalog.models import Image
from catalog.vector_search import refresh_planner_statistics

BULK_LOAD_ROWS = 1000  # after this many new vectors, refresh the planner's statistics


class Command(BaseCommand):
    help = ("Import every image in a folder: skips files already stored (same bytes), reads size and EXIF, "
            "embeds in batches. Safe to re-run after an interruption. Exits 1 if any file failed.")

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path)
        parser.add_argument("--city", default="", help="City for every imported image (else taken from GPS).")
        parser.add_argument("--group-key", default="", help="Group key (e.g. product id) for every image.")
        parser.add_argument("--recursive", action="store_true", help="Descend into sub-folders.")
        parser.add_argument("--all-files", action="store_true",
                            help="Try every file, not only those with an image file extension.")
        parser.add_argument("--no-progress", action="store_true", help="Do not draw a progress bar.")

    def handle(self, *args, folder: Path, city: str, group_key: str, recursive: bool, all_files: bool,
               no_progress: bool, **options):
        if not folder.is_dir():
            raise CommandError(f"{folder} is not a folder.")
        folder = folder.resolve()
        paths, hidden = folder_listing(folder, recursive=recursive)
        candidates = paths if all_files else [path for path in paths if looks_like_image(path)]
        ignored = len(paths) - len(candidates)
        notes = ([f"skipping {hidden} hidden"] if hidden else []) + (
            [f"ignoring {ignored} without an image file extension (--all-files tries them)"] if ignored else [])
        self.stdout.write(f"Found {len(paths) + hidden} file(s) in {safe_text(folder)}"
                          + (f"; {'; '.join(notes)}." if notes else "."))
        paths = candidates
        report = import_paths(self, paths, root=folder, source=Image.Source.FOLDER, city=city, group_key=group_key,
                              show_progress=not no_progress)
        if report.failed:
            raise CommandError(f"{len(report.failed)} file(s) failed.", returncode=1)


def import_paths(command: BaseCommand, paths, *, root, source, city="", group_key="", show_progress=True):
    """Shared by import_images and load_sample_images: run the pipeline, draw progress, print a summary."""
    try:
        _, embedder = active_space_and_model()  # before the progress bar: a model that cannot load is one clear line
    except EmbedderUnavailable as error:
        raise CommandError(str(error)) from None
    with progress_bar(total=len(paths), enabled=show_progress, stream=command.stderr) as bar:
        def on_outcome(outcome: ItemOutcome) -> None:
            bar.update(1)
            if outcome.status == ItemOutcome.FAILED:
                bar.write(f"FAILED {outcome.source_ref}: {outcome.reason}")

        report = ingest_items(path_items(paths, root=root),
                              options=IngestOptions(source=source, city=city, group_key=group_key),
                              on_outcome=on_outcome, embedder=embedder)
    if report.added >= BULK_LOAD_ROWS:
        refresh_planner_statistics()
    command.stdout.write(f"Added {report.added}, skipped {report.duplicates} duplicate(s), "
                         f"failed {len(report.failed)}.")
    return report
