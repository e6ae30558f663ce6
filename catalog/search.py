"""The one search function behind the pages, the API and the admin."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from django.db.models import Q
from pgvector.django import CosineDistance

from catalog.embedder import get_embedder
from catalog.models import Embedding, EmbeddingSpace, Image

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MAX_TOP_K = 100


class SearchError(ValueError):
    """Bad search input; the message is meant for the user."""


@dataclass(frozen=True)
class ImageFilters:
    """Metadata filters. They apply inside the vector query, never after it."""

    cities: tuple[str, ...] = ()
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None

    def as_q(self, prefix: str = "") -> Q:
        q = Q()
        if self.cities:
            q &= Q(**{f"{prefix}city__in": list(self.cities)})
        for name, lookup, value in (("width", "gte", self.min_width), ("width", "lte", self.max_width),
                                    ("height", "gte", self.min_height), ("height", "lte", self.max_height)):
            if value is not None:
                q &= Q(**{f"{prefix}{name}__{lookup}": value})
        return q


@dataclass(frozen=True)
class SearchParams:
    text: str = ""
    image: "PILImage | None" = None
    filters: ImageFilters = field(default_factory=ImageFilters)
    top_k: int = 20

    def __post_init__(self):
        if not (1 <= self.top_k <= MAX_TOP_K):
            raise SearchError(f"top_k must be between 1 and {MAX_TOP_K}.")
        if bool(self.text.strip()) == (self.image is not None):
            raise SearchError("Give either a text query or a query image.")


@dataclass(frozen=True)
class SearchHit:
    image: Image
    score: float  # cosine similarity, -1..1, higher is closer


@dataclass(frozen=True)
class SearchResults:
    hits: list[SearchHit]
    encode_ms: float
    database_ms: float


def images_search(*, params: SearchParams) -> SearchResults:
    started = time.perf_counter()
    embedder = get_embedder()
    if params.image is not None:
        vector = embedder.embed_images([params.image])[0]
    else:
        vector = embedder.embed_text(params.text.strip())
    encoded = time.perf_counter()
    hits = nearest_images(space_name=embedder.space_name, vector=vector, filters=params.filters,
                          top_k=params.top_k)
    return SearchResults(hits=hits, encode_ms=(encoded - started) * 1000,
                         database_ms=(time.perf_counter() - encoded) * 1000)


def nearest_images(*, space_name: str, vector: np.ndarray, filters: ImageFilters, top_k: int) -> list[SearchHit]:
    space = EmbeddingSpace.objects.filter(name=space_name).first()
    if space is None:  # nothing embedded with this model yet
        return []
    rows = (
        Embedding.objects.filter(space=space)
        .filter(filters.as_q(prefix="image__"))
        .annotate(distance=CosineDistance(space.typed_vector(), vector))
        .order_by("distance")
        .select_related("image")
        [:top_k]
    )
    return [SearchHit(image=row.image, score=1.0 - float(row.distance)) for row in rows]
