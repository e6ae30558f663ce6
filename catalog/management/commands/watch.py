import signal
import threading
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from catalog.ingest.names import safe_text


class Command(BaseCommand):
    help = ("Watch a folder (sub-folders included) and import the files that appear in it once they have "
            "settled (size and modification time unchanged for --settle seconds), through the same pipeline as "
            "import_images. Catches up on start with what appeared meanwhile; skips what is already stored. "
            "Runs until SIGTERM or Ctrl-C.")

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path)
        parser.add_argument("--settle", type=float, default=10.0, metavar="SECONDS",
                            help="How long a file must stay unchanged before it is imported (default 10).")
        parser.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                            help="How often the folder is scanned (default 5).")
        parser.add_argument("--city", default="", help="City for every imported image (else taken from GPS).")
        parser.add_argument("--group-key", default="", help="Group key (e.g. product id) for every image.")
        parser.add_argument("--all-files", action="store_true",
                            help="Try every file, not only those with an image or video file extension.")
        parser.add_argument("--include-deleted", action="store_true",
                            help="Import again the files whose pictures or videos were deleted in the app "
                                 "(by default they are skipped while their files stay in the folder).")

    def handle(self, *args, folder: Path, settle: float, interval: float, city: str, group_key: str,
               all_files: bool, include_deleted: bool, **options):
        from catalog.embedder import EmbedderUnavailable
        from catalog.ingest.pipeline import IngestOptions
        from catalog.ingest.watch import FolderWatcher
        from catalog.models import Image
        from catalog.spaces import active_space_and_model

        if not folder.is_dir():
            raise CommandError(f"{folder} is not a folder.")
        if not (settle >= 0 and interval > 0):
            raise CommandError("--settle must be 0 or more seconds and --interval more than 0.")
        try:
            active_space_and_model()  # a model that cannot load is one clear line, before any file is read
        except EmbedderUnavailable as error:
            raise CommandError(str(error)) from None

        stop = threading.Event()

        def request_stop(signum, frame):
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)

        def line(text: str) -> None:
            self.stdout.write(text)
            self.stdout.flush()  # a service's log: each line as it happens

        watcher = FolderWatcher(folder, options=IngestOptions(source=Image.Source.FOLDER, city=city,
                                                              group_key=group_key),
                                settle=settle, all_files=all_files, include_deleted=include_deleted, on_line=line)
        line(f"Watching {safe_text(str(watcher.root))} (settle {settle:g} s, every {interval:g} s).")
        watcher.run(interval=interval, stop=stop)
        line("Stopped.")
