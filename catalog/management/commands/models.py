"""Embedding spaces (one per model): list them, build one beside the active one, switch, drop."""

from django.core.management.base import BaseCommand, CommandError

from catalog import spaces, vector_search
from catalog.embedder import EmbedderUnavailable
from catalog.jobs import builds, tasks
from catalog.models import EmbeddingSpace

MISSING_SHOWN = 20


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


class Command(BaseCommand):
    help = ("Embedding spaces, one per model: `models` (or `models list`) shows each one's model, dimensions, "
            "vectors, coverage, index size and state; `models build ARCH PRETRAINED [--weights FILE]` embeds the "
            "collection with another model in the background; `models activate NAME [--force]` switches searches "
            "to it; `models reindex NAME` rebuilds its search graph with the current parameters; `models graphs NAME` "
            "gives frequent filter values (cities, orientations, years) their own graphs; `models drop NAME` "
            "removes a space that does not serve.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action")
        sub.add_parser("list", help="List the embedding spaces (the default).")
        build = sub.add_parser("build", help="Create a space for a model and embed every image into it in the "
                                             "background workers (manage.py db_worker); running it again resumes.")
        build.add_argument("architecture", help="open_clip architecture, e.g. ViT-B-32.")
        build.add_argument("pretrained", nargs="?", default="",
                           help="open_clip pretrained tag, e.g. laion2b_s34b_b79k (not needed with --weights).")
        build.add_argument("--weights", default=None, help="A local open_clip weights file.")
        activate = sub.add_parser("activate", help="Serve searches from this space (every process follows "
                                                   "within one request); needs 100%% coverage unless --force.")
        activate.add_argument("name")
        activate.add_argument("--force", action="store_true", help="Switch although images are missing "
                                                                   "(they are listed and cannot be found).")
        reindex = sub.add_parser("reindex", help="Rebuild a space's search graph with the current parameters "
                                                 "(see `models`: GRAPH) while searches and imports go on; "
                                                 "running it again after an interruption goes on.")
        reindex.add_argument("name")
        graphs = sub.add_parser("graphs", help="Give each city, orientation and year taken with enough images "
                                               "its own search graph (filtered searches walk it), and drop those "
                                               "that no longer have enough. Searches and imports go on "
                                               "meanwhile; from then on the workers refresh them when the space "
                                               "has changed by a tenth (run_graph_refresh).")
        graphs.add_argument("name")
        graphs.add_argument("--min-rows", type=int, default=None,
                            help=f"Images a value needs for a graph (default {vector_search.GRAPH_MIN_ROWS:,}).")
        drop = sub.add_parser("drop", help="Remove a space that does not serve searches: its vectors and index.")
        drop.add_argument("name")

    def handle(self, *args, action=None, **options):
        getattr(self, f"_{action or 'list'}")(**options)

    def _list(self, **_):
        statuses = spaces.space_statuses()
        if not statuses:
            self.stdout.write("No embedding spaces yet: the first import creates the configured model's.")
            return
        rows = [("NAME", "MODEL", "DIMS", "VECTORS", "COVERAGE", "INDEX", "GRAPH", "STATE")]
        current = (EmbeddingSpace.HNSW_M, EmbeddingSpace.HNSW_EF_CONSTRUCTION)
        for status in statuses:
            space = status.space
            state = space.state + (f" (error: {space.error.splitlines()[0][:80]})" if space.error else "")
            graph = space.graph_parameters()
            graph_cell = "-" if graph is None else (f"m={graph[0]} ef_construction={graph[1]}"
                                                    + ("" if graph == current else " (older: models reindex)"))
            values = space.filter_graphs.count()
            graph_cell += f", {values} value graph(s)" if values else ""
            rows.append((space.name, spaces.model_label(space), str(space.dimensions), str(status.vectors),
                         f"{status.coverage:.1f}%", human_bytes(status.index_bytes), graph_cell, state))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])

    def _build(self, architecture, pretrained, weights, **_):
        if not pretrained and not weights:
            raise CommandError("Give a pretrained tag (e.g. laion2b_s34b_b79k) or --weights FILE.")
        try:
            space = builds.start_build(architecture=architecture, pretrained=pretrained, weights_file=weights,
                                       enqueue=tasks.enqueue_build)
        except (EmbedderUnavailable, spaces.SpaceError) as error:
            raise CommandError(str(error)) from None
        status = spaces.space_status(space)
        self.stdout.write(f"Building {space.name} ({space.dimensions}-d): {status.missing} image(s) to embed, "
                          f"coverage {status.coverage:.1f}%. The workers (manage.py db_worker) do it; follow it "
                          f"with `manage.py models`, then `manage.py models activate {space.name}`.")

    def _activate(self, name, force, **_):
        space = spaces.EmbeddingSpace.objects.filter(name=name).first()
        missing = list(spaces.images_missing_from(space).order_by("pk")[:MISSING_SHOWN + 1]) if space else []
        try:
            activation = spaces.activate(name=name, force=force)
        except spaces.SpaceError as error:
            raise CommandError(str(error)) from None
        if activation.missing:
            self.stderr.write(f"{activation.missing} image(s) have no vector in {name} and cannot be found until "
                              f"`manage.py models build` embeds them:")
            for image in missing[:MISSING_SHOWN]:
                self.stderr.write(f"  missing: image {image.pk} {image.original_name}")
            if activation.missing > MISSING_SHOWN:
                self.stderr.write(f"  ... and {activation.missing - MISSING_SHOWN} more")
        builds.after_switch(activation.space.pk, enqueue=tasks.enqueue_build)
        previous = f" (was {activation.previous.name}, now retired)" if activation.previous else ""
        self.stdout.write(f"Searches now use {name}{previous}.")

    def _reindex(self, name, **_):
        try:
            rebuilt = spaces.reindex(name=name)
        except spaces.SpaceError as error:
            raise CommandError(str(error)) from None
        m, ef_construction = EmbeddingSpace.HNSW_M, EmbeddingSpace.HNSW_EF_CONSTRUCTION
        self.stdout.write(f"{name}: graph rebuilt (m={m}, ef_construction={ef_construction})." if rebuilt else
                          f"{name}: the graph already has m={m}, ef_construction={ef_construction}.")

    def _graphs(self, name, min_rows, **_):
        if min_rows is not None and min_rows < 1:
            raise CommandError("--min-rows must be at least 1.")

        def report(change):
            self.stdout.write(f"{name}: {change.action} the graph of {change.column}={change.value} ({change.rows} images)")
        try:
            changes = spaces.refresh_filter_graphs(name=name, min_rows=min_rows, report=report)
        except spaces.SpaceError as error:
            raise CommandError(str(error)) from None
        built = sum(change.action == "built" for change in changes)
        dropped = sum(change.action == "dropped" for change in changes)
        kept = len(changes) - built - dropped
        self.stdout.write(f"{name}: {built} graph(s) built, {kept} kept, {dropped} dropped.")

    def _drop(self, name, **_):
        try:
            removed = spaces.drop(name=name)
        except spaces.SpaceError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Dropped {name}: {removed} vector(s) and its index removed.")
