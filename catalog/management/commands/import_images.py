from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from catalog.embedder import EmbedderUnavailable
from catalog.spaces import active_space_and_model
from catalog.ingest import manifests
from catalog.ingest.pipeline import IngestOptions, ItemOutcome, ItemRejected, ingest_items
from catalog.ingest.remote import FetchRejected, fetch_url
from catalog.jobs import tasks, worker
from catalog.ingest.names import safe_text
from catalog.ingest.sources import folder_listing, looks_like_image, path_items
from catalog.management.progress import progress_bar
from catalog.models import Image
from catalog.vector_search import refresh_planner_statistics

BULK_LOAD_ROWS = 1000  # after this many new vectors, refresh the planner's statistics


class Command(BaseCommand):
    help = ("Import every image in a folder, or the rows of a manifest (--manifest): skips files already stored "
            "(same bytes), reads size and EXIF, embeds in batches. Safe to re-run after an interruption. Exits 1 "
            "if any file or manifest row failed.")

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path, nargs="?")
        parser.add_argument("--manifest", type=Path,
                            help="A CSV or JSON Lines manifest: one image (path, or url) per row, with its own "
                                 "metadata (see README, Manifests).")
        parser.add_argument("--base", type=Path,
                            help="The folder the manifest's paths are relative to (default: the manifest's folder).")
        parser.add_argument("--city", default="", help="City for every imported image (else taken from GPS).")
        parser.add_argument("--group-key", default="", help="Group key (e.g. product id) for every image.")
        parser.add_argument("--recursive", action="store_true", help="Descend into sub-folders.")
        parser.add_argument("--all-files", action="store_true",
                            help="Try every file, not only those with an image file extension.")
        parser.add_argument("--no-progress", action="store_true", help="Do not draw a progress bar.")

    def handle(self, *args, folder: Path | None, city: str, group_key: str, recursive: bool, all_files: bool,
               no_progress: bool, manifest: Path | None, base: Path | None, **options):
        if manifest is not None:
            if folder is not None:
                raise CommandError("Give a folder or --manifest, not both.")
            return self._import_manifest(manifest, base=base or manifest.parent, city=city, group_key=group_key,
                                         show_progress=not no_progress)
        if folder is None:
            raise CommandError("Give a folder to import, or --manifest FILE.")
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

    def _import_manifest(self, manifest: Path, *, base: Path, city: str, group_key: str, show_progress: bool):
        if not base.is_dir():
            raise CommandError(f"{base} is not a folder.")
        bad_rows = []

        def on_bad_row(row: manifests.RowError) -> None:
            bad_rows.append(row)
            self.stderr.write(f"{safe_text(str(manifest))} {row}")

        try:
            stream = manifest.open("rb")
        except OSError as error:
            raise CommandError(f"Cannot read {safe_text(str(manifest))}: {error.strerror or error}") from None
        with stream:
            try:
                rows = manifests.opened_rows(stream, name=manifest.name,
                                             limits=manifests.ManifestLimits.from_settings())
            except manifests.ManifestRejected as rejected:
                raise CommandError(f"{safe_text(str(manifest))}: {rejected}") from None
            items = manifests.file_items(rows, base=base, fetch=_fetch, on_bad_row=on_bad_row)
            report = import_items(self, items, total=None, source=Image.Source.FOLDER, city=city,
                                  group_key=group_key, show_progress=show_progress,
                                  bad_rows=lambda: len(bad_rows), list_duplicates=True)
        if bad_rows or report.failed:
            raise CommandError(f"{len(bad_rows)} bad row(s), {len(report.failed)} file(s) failed.", returncode=1)


def _fetch(url: str) -> bytes:
    # A manifest's URL rows go through the same guarded fetcher as URL imports (private addresses refused).
    try:
        return fetch_url(url, policy=worker.fetch_policy(), resolver=worker.resolver).data
    except FetchRejected as rejected:
        raise ItemRejected(str(rejected)) from None


def import_paths(command: BaseCommand, paths, *, root, source, city="", group_key="", show_progress=True,
                 skip_deleted=False):
    """Shared by import_images and load_sample_images: run the pipeline, draw progress, print a summary."""
    return import_items(command, path_items(paths, root=root), total=len(paths), source=source, city=city,
                        group_key=group_key, show_progress=show_progress, skip_deleted=skip_deleted)


def import_items(command: BaseCommand, items, *, total, source, city="", group_key="", show_progress=True,
                 bad_rows=lambda: 0, list_duplicates=False, skip_deleted=False):
    try:
        _, embedder = active_space_and_model()  # before the progress bar: a model that cannot load is one clear line
    except EmbedderUnavailable as error:
        raise CommandError(str(error)) from None
    with progress_bar(total=total, enabled=show_progress, stream=command.stderr) as bar:
        def on_outcome(outcome: ItemOutcome) -> None:
            bar.update(1)
            if outcome.status == ItemOutcome.FAILED:
                bar.write(f"FAILED {outcome.source_ref}: {outcome.reason}")
            elif outcome.status == ItemOutcome.DUPLICATE and list_duplicates:  # a manifest row's metadata is lost
                bar.write(f"skipped {outcome.source_ref}: {outcome.reason}")

        report = ingest_items(items,
                              options=IngestOptions(source=source, city=city, group_key=group_key,
                                                    skip_deleted=skip_deleted),
                              on_outcome=on_outcome, embedder=embedder)
    if report.added >= BULK_LOAD_ROWS:
        refresh_planner_statistics()
    if report.added:  # a worker refreshes the value graphs if the space changed enough (run_graph_refresh)
        tasks.enqueue_graph_refresh()
    rows = bad_rows()
    if videos := [outcome for outcome in report.outcomes if outcome.frames]:
        command.stdout.write(f"Videos added: {len(videos)}, as {sum(o.frames for o in videos)} key frame(s).")
    deleted = sum(1 for outcome in report.outcomes if outcome.status == ItemOutcome.DELETED)
    command.stdout.write(f"Added {report.added}, skipped {report.duplicates} duplicate(s)"
                         + (f" and {deleted} deleted in the app" if deleted else "")
                         + f", failed {len(report.failed)}" + (f", {rows} bad manifest row(s)." if rows else "."))
    return report
