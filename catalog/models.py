"""Image records, their embeddings, and the embedding spaces (one per model)."""

from __future__ import annotations

import hashlib
import uuid

from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, HashIndex, OpClass
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, connections, models, transaction
from django.db.models import Q
from django.db.models.lookups import Exact, GreaterThan, LessThan
from django.db.models.functions import Cast
from django.utils import timezone as dj_timezone
from django.utils.translation import gettext_lazy as _
from pgvector.django import HalfVectorField, HnswIndex

SHA256_HEX_LENGTH = 64
# The instants Python's datetime can hold: a stored value outside them (e.g. year 0 after a +14:00
# EXIF offset) cannot be read back by the driver and would break every query that returns it.
TAKEN_AT_MIN = datetime(1, 1, 1, tzinfo=dt_timezone.utc)
TAKEN_AT_MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt_timezone.utc)


class EmbeddingSpaceQuerySet(models.QuerySet):
    def ensure(self, *, name: str, dimensions: int, **defaults) -> "EmbeddingSpace":
        """Return the space called ``name``, creating it (with ``defaults``) and its HNSW index on first use."""
        space = self.filter(name=name).first()
        # Outside a transaction the index is built CONCURRENTLY: a plain CREATE INDEX scans the
        # whole embedding table holding a lock that stops every import meanwhile.
        concurrently = not connection.in_atomic_block
        created = False
        if space is None:
            with transaction.atomic():
                space, created = self.get_or_create(name=name, defaults={"dimensions": dimensions, **defaults})
                if created and not concurrently:
                    # Deferred foreign-key checks still pending in the caller's transaction would
                    # make CREATE INDEX fail ("pending trigger events"): run them now.
                    connection.check_constraints()
                    with connection.schema_editor() as editor:
                        editor.add_index(Embedding, space.hnsw_index())
        if concurrently and created:
            # Only by the process that made the row: a second CREATE INDEX CONCURRENTLY on the same
            # table waits for the first, which waits for the second's snapshot (a deadlock).
            space.build_index_concurrently()
        if space.dimensions != dimensions:
            raise ValueError(f"embedding space {name!r} holds {space.dimensions}-d vectors, "
                             f"the model produces {dimensions}-d")
        return space


class EmbeddingSpace(models.Model):
    """One model's vector space, e.g. ``xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k``.

    Vectors of different spaces are never compared. Keeping them apart lets a
    second model be back-filled while the first keeps serving searches. Each
    space has its own partial HNSW index over ``vector::halfvec(dimensions)``,
    because pgvector can only index a column of fixed dimension.

    Lifecycle (catalog/spaces.py, ``manage.py models``): a space is *building* while its vectors
    are back-filled (new imports are embedded into it too), *active* while it serves searches (at
    most one, a partial unique index), *retired* after another one took over. The model identity
    (architecture, pretrained tag or weights file) lets any process build the space's model.
    """

    class State(models.TextChoices):
        BUILDING = "building", _("Building")
        ACTIVE = "active", _("Active")
        RETIRED = "retired", _("Retired")

    # Graph parameters from bench/search_db.py --sweep / --graphs on clustered data (bench/README.md):
    # at 1,000,000 images, ef_construction 256 reaches every tight trip from ef_search 200, where 128
    # needed 800 (catalog/vector_search.py picks the walk by how an index was built; ``manage.py models
    # reindex`` rebuilds an older index with these).
    HNSW_M = 16
    HNSW_EF_CONSTRUCTION = 256

    name = models.CharField(max_length=255, unique=True)
    dimensions = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(16000)])
    created_at = models.DateTimeField(auto_now_add=True)
    # Spaces made outside the lifecycle (benchmarks, tests) serve nothing and receive nothing.
    state = models.CharField(max_length=16, choices=State.choices, default=State.RETIRED)
    # The model identity; an empty architecture: a space no process can build a model for.
    architecture = models.CharField(max_length=255, blank=True, help_text=_("open_clip architecture."))
    pretrained = models.CharField(max_length=255, blank=True, help_text=_("open_clip pretrained tag."))
    weights_file = models.CharField(max_length=1000, blank=True,
                                    help_text=_("Local weights file (takes precedence over the tag)."))
    random_init = models.BooleanField(default=False, help_text=_("Random weights (tests only)."))
    error = models.TextField(blank=True, help_text=_("Why the last build run stopped, if it failed."))
    activated_at = models.DateTimeField(null=True, blank=True)
    # Value graphs (FilterGraph), once asked for (manage.py models graphs): the --min-rows they were
    # refreshed with and the space's size then; refreshed again by the worker when it has changed
    # by a tenth (catalog.spaces.refresh_due_graphs). Null: never asked for.
    graphs_min_rows = models.PositiveIntegerField(null=True, blank=True)
    graphs_refreshed_rows = models.PositiveBigIntegerField(null=True, blank=True)

    objects = EmbeddingSpaceQuerySet.as_manager()

    class Meta:
        verbose_name = _("embedding space")
        verbose_name_plural = _("embedding spaces")
        constraints = [
            # Searches read "the active space": there is never more than one.
            models.UniqueConstraint(fields=["state"], condition=Q(state="active"), name="one_active_space"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.dimensions}-d)"

    @property
    def has_model(self) -> bool:
        return bool(self.architecture)

    def build_index_concurrently(self) -> None:
        """Build its HNSW index without stopping imports (outside a transaction); a no-op if it exists."""
        _create_index_if_missing(self.hnsw_index(), concurrently=True)

    def repair_index_concurrently(self) -> None:
        """Build its HNSW index if it is missing, or left invalid by a CONCURRENTLY build that was
        killed (such an index is updated by every insert but never used); one being built is left be."""
        concurrently = not connection.in_atomic_block  # not allowed in a transaction
        if _left_invalid(self.index_name):
            _drop_index(self.index_name, concurrently=concurrently)
        _create_index_if_missing(self.hnsw_index(), concurrently=concurrently)

    def graph_parameters(self, *, using: str = "default") -> tuple[int, int] | None:
        """(m, ef_construction) its HNSW index was built with (pgvector's defaults where the index does
        not say); None without an index."""
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", [self.index_name])
            row = cursor.fetchone()
        if row is None:
            return None
        options = dict(option.split("=", 1) for option in row[0] or [])
        return int(options.get("m", 16)), int(options.get("ef_construction", 64))

    def rebuild_index_concurrently(self) -> bool:
        """Build its HNSW index again with the current parameters, if it was built with others, without
        stopping imports or searches: the new graph is built CONCURRENTLY beside the old one under a
        temporary name, then takes its place (inside a transaction, as in tests, plainly). Interrupted,
        running it again goes on; True when it rebuilt."""
        concurrently = not connection.in_atomic_block  # not allowed in a transaction
        next_name = f"{self.index_name}_next"
        if self.graph_parameters() == (self.HNSW_M, self.HNSW_EF_CONSTRUCTION):
            _drop_index(next_name, concurrently=concurrently)  # one cut short after the swap (or a stray build)
            return False
        if _left_invalid(next_name):  # a build of it that was killed
            _drop_index(next_name, concurrently=concurrently)
        if not concurrently:  # deferred foreign-key checks of this transaction would block CREATE INDEX
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        index = self.hnsw_index()
        index.name = next_name
        _create_index_if_missing(index, concurrently=concurrently)
        # Both graphs serve meanwhile (the planner takes either); the old one goes, the new one is renamed.
        _drop_index(self.index_name, concurrently=concurrently)
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER INDEX "{next_name}" RENAME TO "{self.index_name}"')
        return True

    def index_exists(self) -> bool:
        """Whether its HNSW index exists, valid or not (a catalog lookup: no lock is taken)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [self.index_name])
            return cursor.fetchone()[0]

    def has_index(self) -> bool:
        """Whether its HNSW index exists and is valid (a CONCURRENTLY build cut short leaves an invalid one)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [self.index_name])
            row = cursor.fetchone()
        return bool(row and row[0])

    @property
    def index_name(self) -> str:
        return f"catalog_embedding_hnsw_{self.pk}"

    def typed_vector(self) -> Cast:
        """The vector column cast to this space's dimension: the expression its index covers."""
        return Cast("vector", HalfVectorField(dimensions=self.dimensions))

    def hnsw_index(self) -> HnswIndex:
        return HnswIndex(
            OpClass(self.typed_vector(), name="halfvec_ip_ops"),
            name=self.index_name,
            condition=Q(space_id=self.pk),
            m=self.HNSW_M,
            ef_construction=self.HNSW_EF_CONSTRUCTION,
        )


class FilterGraph(models.Model):
    """A partial HNSW graph over the rows of one space that share one filter value: a city, an
    orientation, a year taken, or an aligned block of years ("2016-2019": vector_search.YEAR_BLOCKS
    years from a multiple of that), so that a range of years walks fewer graphs than one per year.

    A filter matching a few percent of a large collection is neither cheap to rank exactly (its tens
    of thousands of rows) nor safe to walk in the space's graph (its rows are scattered among
    non-matching neighbours: recall 0.84-0.91 at 1,000,000 images). Walking the value's own graph is
    both (bench/README.md). ``manage.py models graphs`` builds one for every value with enough rows
    (catalog/spaces.py); catalog/vector_search.py splits a filter across them.
    """

    class Column(models.TextChoices):
        CITY = "city", _("City")
        ORIENTATION = "orientation", _("Orientation")
        YEAR = "year", _("Year taken (UTC)")

    space = models.ForeignKey(EmbeddingSpace, on_delete=models.CASCADE, related_name="filter_graphs")
    column = models.CharField(max_length=16, choices=Column.choices)
    value = models.CharField(max_length=120)  # the city, the orientation's number (1, -1, 0), "2016" or "2016-2019"
    rows = models.PositiveIntegerField(help_text=_("Rows the graph covered when it was built."))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("filter graph")
        verbose_name_plural = _("filter graphs")
        constraints = [
            models.UniqueConstraint(fields=["space", "column", "value"], name="one_graph_per_filter_value"),
            models.CheckConstraint(
                condition=Q(column="city") | Q(column="orientation", value__in=["1", "-1", "0"])
                | Q(column="year", value__regex=r"^[0-9]{4}(-[0-9]{4})?$"),
                name="filter_graph_value_fits_its_column"),
        ]

    def __str__(self) -> str:
        return f"{self.column}={self.value} in space {self.space_id}"

    @property
    def index_name(self) -> str:
        return graph_index_name(self.space_id, self.column, self.value)

    def condition(self) -> Q:
        """The rows it covers, as a filter over Embedding (the index's WHERE, less the space)."""
        return filter_value_q(self.column, self.value)

    def hnsw_index(self, space: EmbeddingSpace) -> HnswIndex:
        """The space's own graph, narrowed to this value's rows."""
        index = space.hnsw_index()
        index.name, index.condition = self.index_name, index.condition & self.condition()
        return index

    def build_index(self, space: EmbeddingSpace) -> None:
        """Build its graph (CONCURRENTLY outside a transaction); one a killed build left invalid is
        built again, a valid one is kept."""
        concurrently = not connection.in_atomic_block
        if _left_invalid(self.index_name):
            _drop_index(self.index_name, concurrently=concurrently)
        _create_index_if_missing(self.hnsw_index(space), concurrently=concurrently)

    def drop_index(self) -> None:
        _drop_index(self.index_name, concurrently=not connection.in_atomic_block)


def graph_index_name(space_id: int, column: str, value: str) -> str:
    # A digest: a city name may hold anything, an index name only 63 bytes.
    return f"catalog_embedding_g{space_id}_{column}_{hashlib.sha1(str(value).encode()).hexdigest()[:12]}"


def year_bounds(year: int) -> tuple[datetime, datetime]:
    return datetime(year, 1, 1, tzinfo=dt_timezone.utc), datetime(year + 1, 1, 1, tzinfo=dt_timezone.utc)


def year_span(value: str) -> tuple[int, int]:
    """The first and last year of a year graph's value: "2016" or "2016-2019"."""
    first, _, last = value.partition("-")
    return int(first), int(last or first)


def filter_value_q(column: str, value: str) -> Q:
    """The Embedding rows of one filter value."""
    if column == FilterGraph.Column.YEAR:
        first, last = year_span(value)
        return Q(taken_at__gte=year_bounds(first)[0], taken_at__lt=year_bounds(last)[1])
    if column == FilterGraph.Column.ORIENTATION:
        return Q(orientation=int(value))
    return Q(city=value)


def _create_index_if_missing(index, *, concurrently: bool) -> None:
    """CREATE INDEX [CONCURRENTLY] IF NOT EXISTS for an index of Embedding."""
    with connection.schema_editor(atomic=False) as editor:
        sql = str(index.create_sql(Embedding, editor, concurrently=concurrently))
        head = "CREATE INDEX CONCURRENTLY" if concurrently else "CREATE INDEX"
        # No parameters: the statement holds its literals already, and a "%" in one (a city in a
        # value graph's WHERE) is then not taken for a placeholder.
        editor.execute(sql.replace(head, head + " IF NOT EXISTS", 1), params=None)


def _left_invalid(name: str) -> bool:
    """Whether the index ``name`` is invalid and not being built: what a killed CONCURRENTLY build leaves."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT NOT i.indisvalid AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p"
            " WHERE p.index_relid = i.indexrelid) FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", [name])
        row = cursor.fetchone()
    return bool(row and row[0])


def _drop_index(name: str, *, concurrently: bool) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX {"CONCURRENTLY " * concurrently}IF EXISTS "{name}"')


class VideoQuerySet(models.QuerySet):
    def first_frames_by_hash(self, hashes) -> dict[str, int]:
        """{sha256: id of its first frame} of the videos among ``hashes`` that are stored (one query)."""
        first = Image.objects.filter(video=models.OuterRef("pk")).order_by("video_time", "pk").values("pk")[:1]
        return dict(self.filter(sha256__in=list(hashes)).annotate(first=models.Subquery(first))
                    .values_list("sha256", "first"))


class Video(models.Model):
    """A video whose key frames are stored as images (``Image.video``), all in one transaction.

    It never outlives its frames: deleting it deletes them (CASCADE), and a trigger (migration
    0014_videos) deletes it when its last frame is deleted; its file goes with the frames' files
    (catalog.derived_files.delete_images, the admin's delete), else with ``manage.py sweep_orphans``.
    """

    file = models.FileField(_("file"), upload_to="videos/", max_length=255)
    sha256 = models.CharField(_("SHA-256"), max_length=SHA256_HEX_LENGTH, unique=True, editable=False)
    original_name = models.CharField(_("original name"), max_length=255, blank=True)
    duration = models.FloatField(_("duration"), help_text=_("Seconds."))
    width = models.PositiveIntegerField(_("width"))
    height = models.PositiveIntegerField(_("height"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    objects = VideoQuerySet.as_manager()

    class Meta:
        verbose_name = _("video")
        verbose_name_plural = _("videos")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(width__gt=0) & Q(height__gt=0) & Q(duration__gte=0),
                                   name="video_positive_size"),
        ]

    def __str__(self) -> str:
        return self.original_name or self.sha256[:12]


class DeletedContentQuerySet(models.QuerySet):
    def among(self, hashes) -> set[str]:
        """Those of ``hashes`` that were deleted in the app (one query: callers pass a batch)."""
        return set(self.filter(sha256__in=list(hashes)).values_list("sha256", flat=True))


class DeletedContent(models.Model):
    """Bytes (an image's or a whole video's SHA-256) deleted in the app: a tombstone, written in the
    delete's transaction (catalog.derived_files.delete_images), so that ``manage.py watch`` does not
    bring back a file that is still in its folder. An explicit import of the same bytes (upload,
    import_images, URL) is a deliberate re-add: the pipeline removes the tombstone in the
    transaction that stores the image again."""

    sha256 = models.CharField(_("SHA-256"), max_length=SHA256_HEX_LENGTH, editable=False)
    original_name = models.CharField(_("original name"), max_length=255, blank=True)
    deleted_at = models.DateTimeField(_("deleted at"), default=dj_timezone.now)

    objects = DeletedContentQuerySet.as_manager()

    class Meta:
        verbose_name = _("deleted content")
        verbose_name_plural = _("deleted content")
        ordering = ["-deleted_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["sha256"], name="deleted_content_sha256_unique"),
            models.CheckConstraint(condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="deleted_content_sha256_hex"),
        ]

    def __str__(self) -> str:
        return self.original_name or self.sha256[:12]


def files_in_use(names: list[str]) -> set[str]:
    """Those of ``names`` (storage names) that a row names: an image's file or thumbnail, a video's file."""
    files = Image.objects.filter(file__in=names).values_list("file", flat=True)
    thumbnails = Image.objects.filter(thumbnail__in=names).values_list("thumbnail", flat=True)
    videos = Video.objects.filter(file__in=names).values_list("file", flat=True)
    return set(files) | set(thumbnails) | set(videos)


class ImageQuerySet(models.QuerySet):
    def ids_by_hash(self, hashes) -> dict[str, int]:
        """{sha256: id} of the images among ``hashes`` that are stored already (one query)."""
        return dict(self.filter(sha256__in=list(hashes)).values_list("sha256", "pk"))


class Image(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        EMBEDDED = "embedded", _("Embedded")
        FAILED = "failed", _("Failed")

    class Source(models.TextChoices):
        UPLOAD = "upload", _("Upload")
        URL = "url", _("URL")
        ARCHIVE = "archive", _("Archive")
        FOLDER = "folder", _("Folder")
        SAMPLE = "sample", _("Sample data")

    file = models.FileField(_("file"), upload_to="images/", max_length=255)
    thumbnail = models.FileField(_("thumbnail"), upload_to="thumbnails/", max_length=255, blank=True)
    sha256 = models.CharField(_("SHA-256"), max_length=SHA256_HEX_LENGTH, unique=True, editable=False)
    original_name = models.CharField(_("original name"), max_length=255, blank=True)
    # Indexed: size ranges are common search filters, and an unindexed one reads every row.
    width = models.PositiveIntegerField(_("width"), db_index=True)
    height = models.PositiveIntegerField(_("height"), db_index=True)
    city = models.CharField(_("city"), max_length=120, blank=True, db_index=True)
    # Several pictures of one thing (e.g. a product id); searches can collapse on it.
    group_key = models.CharField(_("group key"), max_length=120, blank=True, db_index=True)
    taken_at = models.DateTimeField(_("taken at"), null=True, blank=True, db_index=True)
    latitude = models.FloatField(_("latitude"), null=True, blank=True,
                                 validators=[MinValueValidator(-90), MaxValueValidator(90)])
    longitude = models.FloatField(_("longitude"), null=True, blank=True,
                                  validators=[MinValueValidator(-180), MaxValueValidator(180)])
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    source_ref = models.CharField(_("source detail"), max_length=1000, blank=True,
                                  help_text=_("Path, URL or archive member the image came from."))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING,
                              db_index=True)
    status_reason = models.TextField(_("status reason"), blank=True)
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                 verbose_name=_("added by"), related_name="+",
                                 help_text=_("Who imported it (empty: a command-line import)."))
    # A key frame of a video: the video and the frame's time in it (both set, or neither).
    video = models.ForeignKey(Video, on_delete=models.CASCADE, null=True, blank=True, related_name="frames",
                              verbose_name=_("video"))
    video_time = models.FloatField(_("time in the video"), null=True, blank=True, help_text=_("Seconds."))
    # Per-image metadata from a manifest row (catalog/ingest/manifests.py); attributes and tags are
    # filterable by equality / membership (GIN indexes below).
    title = models.CharField(_("title"), max_length=255, blank=True)
    tags = ArrayField(models.CharField(max_length=100), verbose_name=_("tags"), default=list, blank=True)
    attributes = models.JSONField(_("attributes"), default=dict, blank=True,
                                  help_text=_("Free-form attributes: a JSON object of names to strings, numbers "
                                              "or booleans."))

    objects = ImageQuerySet.as_manager()

    class Meta:
        verbose_name = _("image")
        verbose_name_plural = _("images")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(width__gt=0) & Q(height__gt=0), name="image_positive_size"),
            models.CheckConstraint(
                condition=Q(latitude__isnull=True) | Q(latitude__gte=-90, latitude__lte=90),
                name="image_latitude_range"),
            models.CheckConstraint(
                condition=Q(longitude__isnull=True) | Q(longitude__gte=-180, longitude__lte=180),
                name="image_longitude_range"),
            models.CheckConstraint(
                condition=~Q(status="failed") | ~Q(status_reason=""), name="image_failure_has_reason"),
            models.CheckConstraint(
                condition=Q(video__isnull=True, video_time__isnull=True)
                | Q(video__isnull=False, video_time__isnull=False, video_time__gte=0),
                name="image_video_frame_time"),
            models.CheckConstraint(
                condition=Q(taken_at__isnull=True) | Q(taken_at__gte=TAKEN_AT_MIN, taken_at__lte=TAKEN_AT_MAX),
                name="image_taken_at_readable"),
            models.CheckConstraint(
                condition=Q(Exact(models.Func(models.F("attributes"), function="jsonb_typeof",
                                              output_field=models.CharField()), "object")),
                name="image_attributes_object"),
        ]
        indexes = [GinIndex(fields=["attributes"], name="image_attributes_gin"),
                   GinIndex(fields=["tags"], name="image_tags_gin"),
                   # Browse pages in their two orders (catalog.search.images_browse) read these
                   # instead of sorting the whole collection (bench/browse.py, 1.1M images: 0.3-2.2 s a page without).
                   models.Index(models.F("created_at").desc(), models.F("id").desc(), name="image_browse_added"),
                   models.Index(models.F("taken_at").desc(nulls_last=True), models.F("created_at").desc(),
                                models.F("id").desc(), name="image_browse_taken"),
                   # manage.py watch finds the files it already stored by path on every start (catalog/ingest/
                   # watch.py); hash, not btree: a 1,000-character path can pass a btree entry's size limit.
                   HashIndex(fields=["source_ref"], name="image_source_ref_hash")]

    def __str__(self) -> str:
        return self.original_name or self.sha256[:12]

    @property
    def thumbnail_url(self) -> str:
        return (self.thumbnail or self.file).url

    def mark_failed(self, reason: str) -> None:
        self.status, self.status_reason = self.Status.FAILED, reason
        self.save(update_fields=["status", "status_reason"])


# The image columns an embedding carries for filtering (see Embedding).
FILTER_COLUMNS = ("city", "width", "height", "taken_at", "orientation")
_l2_norm = models.Func(models.F("vector"), function="l2_norm", output_field=models.FloatField())


class Embedding(models.Model):
    """One image's vector in one embedding space, with copies of the image's filter columns.

    The copies let a filtered search read one table: the filter, its row count and the vectors come
    from the same rows and indexes (bench/search_db.py). The database keeps them equal to the image's
    values (triggers from migration 0006 copy them on every insert or update of an embedding, and
    again when the image's values change), so nothing in Python ever writes them.
    """

    class Orientation(models.IntegerChoices):
        PORTRAIT = -1
        SQUARE = 0
        LANDSCAPE = 1

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.PROTECT, related_name="embeddings")
    # Half precision in the row itself (STORAGE PLAIN, migration 0006): a 512-d vector is 1 KB, so an
    # exact scan reads no TOAST (20,000 filtered rows: 127 -> 26 ms); recall cost in bench/README.md.
    # No fixed dimension here: each space's partial index casts to its own.
    vector = HalfVectorField()
    created_at = models.DateTimeField(auto_now_add=True)

    city = models.CharField(max_length=120, default="", editable=False)
    width = models.PositiveIntegerField(default=0, editable=False)
    height = models.PositiveIntegerField(default=0, editable=False)
    taken_at = models.DateTimeField(null=True, editable=False)
    group_key = models.CharField(max_length=120, default="", editable=False)
    orientation = models.GeneratedField(
        expression=models.Case(
            models.When(width__gt=models.F("height"), then=models.Value(Orientation.LANDSCAPE)),
            models.When(width__lt=models.F("height"), then=models.Value(Orientation.PORTRAIT)),
            default=models.Value(Orientation.SQUARE)),
        output_field=models.SmallIntegerField(choices=Orientation.choices), db_persist=True)

    class Meta:
        verbose_name = _("embedding")
        verbose_name_plural = _("embeddings")
        constraints = [
            models.UniqueConstraint(fields=["space", "image"], name="one_embedding_per_space"),
            # Unit vectors make the inner product the cosine similarity, so the index uses the plain
            # inner product, whose values the query returns unchanged: the cosine operator class
            # normalises and rounds again inside the index, and its order then disagrees with the
            # returned distances by ~1e-6.
            models.CheckConstraint(
                condition=Q(GreaterThan(_l2_norm, 0.99), LessThan(_l2_norm, 1.01)), name="embedding_unit_vector"),
        ]
        # What a filtered search counts (catalog/vector_search.py), one space at a time. Each index
        # carries the other filter columns, so a count of several filters reads the index only: a
        # correlated pair (min_width + max_height) otherwise visits every row one bound matches.
        indexes = [models.Index(fields=["space", name], name=f"embedding_space_{name}",
                                include=["image", *(other for other in FILTER_COLUMNS if other != name)])
                   for name in FILTER_COLUMNS]

    def __str__(self) -> str:
        return f"{self.image_id} in {self.space_id}"


# --- Import jobs ----------------------------------------------------------------------------------
# An import job is the unit of truth for background ingestion: its items carry their own state, so
# a worker that dies mid-job leaves a record of exactly what is left to do.


class ImportJobQuerySet(models.QuerySet):
    def unfinished(self):
        return self.filter(state__in=[ImportJob.State.QUEUED, ImportJob.State.RUNNING])

    def finished(self):
        return self.filter(state__in=[ImportJob.State.DONE, ImportJob.State.FAILED, ImportJob.State.CANCELLED])


class ImportJob(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")  # every item is added, a duplicate or failed
        FAILED = "failed", _("Failed")  # the job as a whole could not run (see ``error``)
        CANCELLED = "cancelled", _("Cancelled")  # stopped by a user: workers claim none of its items any more

    class Via(models.TextChoices):
        API = "api", _("API")
        PAGE = "page", _("Import page")
        ADMIN = "admin", _("Admin")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    created_via = models.CharField(_("created via"), max_length=16, choices=Via.choices)
    city = models.CharField(_("city"), max_length=120, blank=True,
                            help_text=_("Applied to every image of this import."))
    group_key = models.CharField(_("group key"), max_length=120, blank=True,
                                 help_text=_("Applied to every image of this import."))
    # Counts over the items (an expanded archive counts as its members); kept in step with the
    # items' states in the same transactions, recounted from the items when the job finishes.
    total = models.PositiveIntegerField(_("total"), default=0)
    added = models.PositiveIntegerField(_("added"), default=0)
    duplicates = models.PositiveIntegerField(_("duplicates"), default=0)
    failed = models.PositiveIntegerField(_("failed"), default=0)
    error = models.TextField(_("error"), blank=True, help_text=_("Why the job as a whole failed."))
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0, help_text=_(
        "Failed tries in a row (crashes, errors) since a chunk was last worked through; "
        "the job fails after IMPORT_MAX_ATTEMPTS."))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   verbose_name=_("created by"), related_name="import_jobs")

    objects = ImportJobQuerySet.as_manager()

    class Meta:
        verbose_name = _("import job")
        verbose_name_plural = _("import jobs")
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~Q(state="failed") | ~Q(error=""), name="import_failure_has_reason"),
        ]

    def close(self, state: str) -> None:
        """End the job in ``state``, its counts recounted from its items (the row locked by the caller)."""
        counts = self.items.counts()
        self.total, self.added, self.duplicates, self.failed = (
            counts["total"], counts["added"], counts["duplicates"], counts["failed"])
        self.state, self.finished_at = state, dj_timezone.now()
        self.save(update_fields=["total", "added", "duplicates", "failed", "state", "finished_at"])

    def __str__(self) -> str:
        return f"Import {self.pk}"

    @property
    def done(self) -> int:
        """Items processed so far, whatever their outcome."""
        return self.added + self.duplicates + self.failed

    @property
    def is_finished(self) -> bool:
        return self.state in (self.State.DONE, self.State.FAILED, self.State.CANCELLED)

    @property
    def percent(self) -> int:
        if self.state == self.State.DONE:
            return 100
        return min(100, self.done * 100 // self.total) if self.total else 0

    @property
    def payload_folder(self) -> str:
        return f"imports/{self.pk}"


class ImportItemQuerySet(models.QuerySet):
    def pending(self):
        return self.filter(state=ImportItem.State.PENDING)

    def countable(self):
        """Items that count towards the job's totals (an expanded archive counts as its members)."""
        return self.exclude(state=ImportItem.State.EXPANDED)

    def errors(self):
        return self.filter(state=ImportItem.State.FAILED).order_by("id")

    def counts(self) -> dict[str, int]:
        state = ImportItem.State
        return self.countable().aggregate(
            total=models.Count("id"),
            added=models.Count("id", filter=Q(state=state.ADDED)),
            duplicates=models.Count("id", filter=Q(state=state.DUPLICATE)),
            failed=models.Count("id", filter=Q(state=state.FAILED)),
        )


class ImportItem(models.Model):
    """One thing to import: an uploaded image, an uploaded archive, an archive member or a URL."""

    class Kind(models.TextChoices):
        UPLOAD = "upload", _("Uploaded image")
        ARCHIVE = "archive", _("Uploaded archive")  # expanded into member items by the worker
        MEMBER = "member", _("Archive member")
        URL = "url", _("URL")

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        EXPANDED = "expanded", _("Expanded")  # an archive whose members are items now
        ADDED = "added", _("Added")
        DUPLICATE = "duplicate", _("Duplicate")
        FAILED = "failed", _("Failed")

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="items")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=1024)
    url = models.TextField(blank=True)
    # Storage name of the uploaded bytes (uploads and archives), kept until the job is done.
    payload = models.CharField(max_length=500, blank=True)
    parent = models.ForeignKey("self", on_delete=models.CASCADE, null=True, blank=True, related_name="members")
    member_index = models.PositiveIntegerField(null=True, blank=True, help_text=_("Position in the archive."))
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    error = models.TextField(blank=True)
    image = models.ForeignKey(Image, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # The worker that claimed the item (kept once it is recorded: who did it) and until when its
    # claim holds unless renewed; a pending item whose claim ran out is claimable again.
    claimed_by = models.CharField(max_length=64, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    # Claims of this item that ran out (its worker died or stalled holding it); the item fails
    # after IMPORT_MAX_ATTEMPTS, alone (catalog/jobs/claims.py).
    attempts = models.PositiveSmallIntegerField(default=0)
    # A manifest row's metadata for this item (catalog/ingest/manifests.RowMetadata.as_json), applied
    # when it is stored: the record that guarantees exactly-once carries it, so a resumed job keeps it.
    metadata = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ImportItemQuerySet.as_manager()

    class Meta:
        verbose_name = _("import item")
        verbose_name_plural = _("import items")
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "state"], name="import_item_job_state"),
                   # Workers claim a job's pending items in id order.
                   models.Index(fields=["job", "id"], condition=Q(state="pending"), name="import_item_pending")]
        constraints = [
            models.CheckConstraint(condition=~Q(state="failed") | ~Q(error=""), name="import_item_failure_has_reason"),
            models.UniqueConstraint(fields=["parent", "member_index"], name="one_item_per_archive_member"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def source_ref(self) -> str:
        if self.kind == self.Kind.URL:
            return self.url
        if self.kind == self.Kind.MEMBER and self.parent_id:
            return f"{self.parent.name}:{self.name}"
        return self.name


# --- Evaluations ----------------------------------------------------------------------------------


class EvaluationRun(models.Model):
    """What ``manage.py evaluate`` measured for one model (catalog/evaluation.py), shown in the admin.

    Keyed by space name, not a foreign key: a model is evaluated in memory, before (or without) any
    space holding its vectors, and its results outlive a dropped space.
    """

    space_name = models.CharField(max_length=255, db_index=True,
                                  help_text=_("The model's embedding space name (architecture/weights)."))
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    results = models.JSONField(help_text=_("Metrics, data set and settings of the run (the --json output)."))

    class Meta:
        verbose_name = _("evaluation run")
        verbose_name_plural = _("evaluation runs")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.space_name} at {self.created_at:%Y-%m-%d %H:%M}"
