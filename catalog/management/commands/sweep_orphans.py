from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Remove stored files under images/ and thumbnails/ that no image references (left by deleted images, "
            "interrupted imports or thumbnail regenerations) once they are older than the grace period, which "
            "protects the files of imports still in flight. Resumable; --dry-run only lists them.")

    def add_arguments(self, parser):
        parser.add_argument("--grace", type=float, default=24.0, metavar="HOURS",
                            help="Keep unreferenced files younger than this (default 24 hours).")
        parser.add_argument("--dry-run", action="store_true", help="List what would be removed; remove nothing.")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, grace: float, dry_run: bool, no_progress: bool, **options):
        from catalog.derived_files import sweep_orphans
        from catalog.management.progress import progress_bar

        if not grace >= 0:
            raise CommandError("--grace must be a number of hours, 0 or more.")
        verb = "would remove" if dry_run else "removed"
        with progress_bar(total=None, enabled=not no_progress, stream=self.stderr, unit="file") as bar:
            report = sweep_orphans(grace=timedelta(hours=grace), dry_run=dry_run,
                                   on_removed=lambda name: bar.write(f"{verb} {name}"),
                                   on_failure=lambda line: bar.write(f"failed {line}"),
                                   on_progress=bar.update)
        self.stdout.write(f"Scanned {report.scanned} file(s): {verb} {report.removed}, kept {report.young} "
                          f"unreferenced within the {grace:g} h grace period, failed {report.failed}.")
        if report.failed:
            raise CommandError(f"{report.failed} file(s) could not be removed; see the lines above.", returncode=1)
