"""The one search function behind the pages, the API and the admin.

``images_search(params=...)`` turns a text query, a query image or a stored
image ("more like this") into a vector, then asks ``vector_search.nearest``
for the closest embedded images that pass the metadata filters, with the
filters inside the same database query. Searches run on a read replica when
one is configured and current (imagesearch/replicas.py), else on the primary.
"""

from __future__ import annotations

import time

import numpy as np
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from typing import TYPE_CHECKING

from django.db import InterfaceError, OperationalError
from django.db.models import F, Q

from catalog.embedder import get_embedder
from catalog.models import Embedding, EmbeddingSpace, Image
from catalog.vector_search import MAX_DEPTH, nearest
from imagesearch import replicas

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MAX_TOP_K = 100
MAX_PAGE = 100
# The id and size columns' ranges: larger numbers are refused as input, never sent to the database.
MAX_SIDE = 2**31 - 1
MAX_ID = 2**63 - 1
ORIENTATIONS = ("landscape", "portrait", "square")


class SearchError(ValueError):
    """Bad search input; the message is meant for the user."""


class ImageNotFound(SearchError):
    """The image named by ``similar_to`` does not exist (a 404 wherever an image is missing)."""


@dataclass(frozen=True)
class ImageFilters:
    """Metadata filters. In a search they apply inside the vector query, never after it."""

    cities: tuple[str, ...] = ()
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    taken_from: date | None = None   # inclusive
    taken_to: date | None = None     # inclusive (the whole day)
    orientation: str = ""            # "", landscape, portrait or square

    def __post_init__(self):
        if self.orientation and self.orientation not in ORIENTATIONS:
            raise SearchError(f"orientation must be one of {', '.join(ORIENTATIONS)}.")
        for low, high, label in ((self.min_width, self.max_width, "width"),
                                 (self.min_height, self.max_height, "height"),
                                 (self.taken_from, self.taken_to, "date")):
            if low is not None and high is not None and low > high:
                raise SearchError(f"The {label} range is empty: minimum is above maximum.")

    def embedding_q(self) -> Q:
        """The filters over Embedding's copies of the image columns (what a search uses)."""
        return self.as_q(orientation_column=True)

    def as_q(self, prefix: str = "", *, orientation_column: bool = False) -> Q:
        def q(lookup: str, value) -> Q:
            return Q(**{prefix + lookup: value})

        result = Q()
        if self.cities:
            result &= q("city__in", list(self.cities))
        for lookup, value in (("width__gte", self.min_width), ("width__lte", self.max_width),
                              ("height__gte", self.min_height), ("height__lte", self.max_height)):
            if value is not None:
                result &= q(lookup, value)
        if self.taken_from is not None:
            result &= q("taken_at__gte", datetime.combine(self.taken_from, dtime.min, tzinfo=timezone.utc))
        if self.taken_to is not None and self.taken_to < date.max:  # the last day has no day after: no bound
            day_after = datetime.combine(self.taken_to + timedelta(days=1), dtime.min, tzinfo=timezone.utc)
            result &= q("taken_at__lt", day_after)
        if self.orientation and orientation_column:  # indexed (Embedding.orientation)
            result &= q("orientation", {"landscape": 1, "portrait": -1, "square": 0}[self.orientation])
        elif self.orientation == "landscape":
            result &= q("width__gt", F(prefix + "height"))
        elif self.orientation == "portrait":
            result &= q("width__lt", F(prefix + "height"))
        elif self.orientation == "square":
            result &= q("width", F(prefix + "height"))
        return result


@dataclass(frozen=True)
class SearchParams:
    text: str = ""
    image: "PILImage | None" = None
    similar_to: int | None = None        # id of a stored image: "more like this"
    filters: ImageFilters = field(default_factory=ImageFilters)
    top_k: int = 20
    page: int = 1
    min_score: float | None = None       # cosine similarity cut-off, -1..1
    collapse_groups: bool = False        # at most one result per Image.group_key

    def __post_init__(self):
        object.__setattr__(self, "text", self.text.strip())
        given = sum((bool(self.text), self.image is not None, self.similar_to is not None))
        if given != 1:
            raise SearchError("Give exactly one of: a text query, a query image, or an image to find similar ones to.")
        if not (1 <= self.top_k <= MAX_TOP_K):
            raise SearchError(f"top_k must be between 1 and {MAX_TOP_K}.")
        if not (1 <= self.page <= MAX_PAGE):
            raise SearchError(f"page must be between 1 and {MAX_PAGE}.")
        if self.page * self.top_k > MAX_DEPTH:
            # Deeper than this, no plan can rank the rows exactly at an affordable cost; refusing
            # is better than pages that silently skip rows.
            raise SearchError(f"Results go {MAX_DEPTH} deep at most: with top_k={self.top_k} the last page is "
                              f"{MAX_DEPTH // self.top_k}. Narrow the search with filters to see other results.")
        if self.min_score is not None and not (-1.0 <= self.min_score <= 1.0):
            raise SearchError("min_score must be between -1 and 1.")


@dataclass(frozen=True)
class SearchHit:
    image: Image
    score: float  # cosine similarity, -1..1, higher is closer


@dataclass(frozen=True)
class SearchResults:
    hits: list[SearchHit]
    page: int
    has_next: bool
    encode_ms: float
    database_ms: float
    database: str = "default"        # the database alias that served it (a replica or the primary)
    depth_limit_reached: bool = False  # more results exist, but past the deepest page served


def images_search(*, params: SearchParams) -> SearchResults:
    using = replicas.search_database()
    try:
        return _search(params, using)
    except (OperationalError, InterfaceError):
        if using == "default":
            raise
        replicas.mark_down(using)  # a replica that fails mid-search is skipped; the primary answers
        return _search(params, "default")
    except SearchError:
        if using == "default" or params.similar_to is None:
            raise
        # "More like this" on an image the replica has not replayed yet: the primary has it.
        return _search(params, "default")


def _search(params: SearchParams, using: str) -> SearchResults:
    started = time.perf_counter()
    embedder = get_embedder()
    space = EmbeddingSpace.objects.using(using).filter(name=embedder.space_name).first()
    if params.similar_to is not None:
        vector = _stored_vector(space, params.similar_to, using)
    elif params.image is not None:
        vector = embedder.embed_images([params.image])[0]
    else:
        vector = embedder.embed_text(params.text)
    encoded = time.perf_counter()

    hits: list[SearchHit] = []
    has_next = more = False
    if space is not None:
        offset = (params.page - 1) * params.top_k
        neighbours = nearest(
            space=space, vector=vector, image_filter=params.filters.embedding_q(), offset=offset,
            limit=params.top_k + 1, max_distance=None if params.min_score is None else 1.0 - params.min_score,
            collapse_groups=params.collapse_groups, exclude_image_id=params.similar_to, using=using)
        more = len(neighbours) > params.top_k
        has_next = more and (params.page + 1) * params.top_k <= MAX_DEPTH
        neighbours = neighbours[:params.top_k]
        images = Image.objects.using(using).in_bulk([n.image_id for n in neighbours])
        hits = [SearchHit(image=images[n.image_id], score=1.0 - n.distance)
                for n in neighbours if n.image_id in images]
    return SearchResults(hits=hits, page=params.page, has_next=has_next,
                         encode_ms=(encoded - started) * 1000,
                         database_ms=(time.perf_counter() - encoded) * 1000,
                         database=using, depth_limit_reached=more and not has_next)


def _stored_vector(space: EmbeddingSpace | None, image_id: int, using: str):
    """The stored vector of an image in the current space: "more like this" never re-embeds."""
    vector = None
    if space is not None:
        vector = (Embedding.objects.using(using).filter(space=space, image_id=image_id)
                  .values_list("vector", flat=True).first())
    if vector is None:
        if not Image.objects.using(using).filter(pk=image_id).exists():
            raise ImageNotFound(f"Image {image_id} does not exist.")
        raise SearchError(f"Image {image_id} has no embedding for the current model yet.")
    return np.asarray(vector, dtype=np.float32)


def similar_images(*, image_id: int, top_k: int = 12) -> list[SearchHit]:
    """Nearest neighbours of a stored image (the detail page)."""
    return images_search(params=SearchParams(similar_to=image_id, top_k=top_k)).hits
