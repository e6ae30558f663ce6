"""Image records, their embeddings, and the embedding spaces (one per model)."""

from __future__ import annotations

from django.contrib.postgres.indexes import OpClass
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, models, transaction
from django.db.models import Q
from django.db.models.functions import Cast
from pgvector.django import HnswIndex, VectorField

SHA256_HEX_LENGTH = 64


class EmbeddingSpaceQuerySet(models.QuerySet):
    def ensure(self, *, name: str, dimensions: int) -> "EmbeddingSpace":
        """Return the space called ``name``, creating it and its HNSW index on first use."""
        space = self.filter(name=name).first()
        if space is None:
            with transaction.atomic():
                space, created = self.get_or_create(name=name, defaults={"dimensions": dimensions})
                if created:
                    with connection.schema_editor() as editor:
                        editor.add_index(Embedding, space.hnsw_index())
        if space.dimensions != dimensions:
            raise ValueError(f"embedding space {name!r} holds {space.dimensions}-d vectors, "
                             f"the model produces {dimensions}-d")
        return space


class EmbeddingSpace(models.Model):
    """One model's vector space, e.g. ``xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k``.

    Vectors of different spaces are never compared. Keeping them apart lets a
    second model be back-filled while the first keeps serving searches. Each
    space has its own partial HNSW index over ``vector::vector(dimensions)``,
    because pgvector can only index a column of fixed dimension.
    """

    name = models.CharField(max_length=255, unique=True)
    dimensions = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(16000)])
    created_at = models.DateTimeField(auto_now_add=True)

    objects = EmbeddingSpaceQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({self.dimensions}-d)"

    @property
    def index_name(self) -> str:
        return f"catalog_embedding_hnsw_{self.pk}"

    def typed_vector(self) -> Cast:
        """The vector column cast to this space's dimension: the expression its index covers."""
        return Cast("vector", VectorField(dimensions=self.dimensions))

    def hnsw_index(self) -> HnswIndex:
        return HnswIndex(
            OpClass(self.typed_vector(), name="vector_cosine_ops"),
            name=self.index_name,
            condition=Q(space_id=self.pk),
            m=16,
            ef_construction=64,
        )


class ImageQuerySet(models.QuerySet):
    def in_cities(self, cities):
        return self.filter(city__in=cities) if cities else self

    def width_between(self, low: int | None, high: int | None):
        return self._between("width", low, high)

    def height_between(self, low: int | None, high: int | None):
        return self._between("height", low, high)

    def _between(self, field: str, low, high):
        qs = self
        if low is not None:
            qs = qs.filter(**{f"{field}__gte": low})
        if high is not None:
            qs = qs.filter(**{f"{field}__lte": high})
        return qs

    def existing_hashes(self, hashes) -> set[str]:
        return set(self.filter(sha256__in=list(hashes)).values_list("sha256", flat=True))


class Image(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        EMBEDDED = "embedded", "Embedded"
        FAILED = "failed", "Failed"

    class Source(models.TextChoices):
        UPLOAD = "upload", "Upload"
        URL = "url", "URL"
        ARCHIVE = "archive", "Archive"
        FOLDER = "folder", "Folder"
        SAMPLE = "sample", "Sample data"

    file = models.FileField(upload_to="images/", max_length=255)
    thumbnail = models.FileField(upload_to="thumbnails/", max_length=255, blank=True)
    sha256 = models.CharField("SHA-256", max_length=SHA256_HEX_LENGTH, unique=True, editable=False)
    original_name = models.CharField(max_length=255, blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    city = models.CharField(max_length=120, blank=True, db_index=True)
    # Several pictures of one thing (e.g. a product id); searches can collapse on it.
    group_key = models.CharField(max_length=120, blank=True, db_index=True)
    taken_at = models.DateTimeField(null=True, blank=True, db_index=True)
    latitude = models.FloatField(null=True, blank=True,
                                 validators=[MinValueValidator(-90), MaxValueValidator(90)])
    longitude = models.FloatField(null=True, blank=True,
                                  validators=[MinValueValidator(-180), MaxValueValidator(180)])
    source = models.CharField(max_length=16, choices=Source.choices)
    source_ref = models.CharField("source detail", max_length=1000, blank=True,
                                  help_text="Path, URL or archive member the image came from.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    status_reason = models.TextField(blank=True)

    objects = ImageQuerySet.as_manager()

    class Meta:
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
        ]

    def __str__(self) -> str:
        return self.original_name or self.sha256[:12]

    @property
    def thumbnail_url(self) -> str:
        return (self.thumbnail or self.file).url

    def mark_failed(self, reason: str) -> None:
        self.status, self.status_reason = self.Status.FAILED, reason
        self.save(update_fields=["status", "status_reason"])


class Embedding(models.Model):
    """One image's vector in one embedding space."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.PROTECT, related_name="embeddings")
    # No fixed dimension here: each space's partial index casts to its own.
    vector = VectorField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["space", "image"], name="one_embedding_per_space")]

    def __str__(self) -> str:
        return f"{self.image_id} in {self.space_id}"
