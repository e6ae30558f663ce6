"""The one search function behind the pages, the API and the admin (and, for the pages' gallery,
``images_browse``: the collection without a query, through the same filters).

``images_search(params=...)`` turns a text query, a query image or a stored
image ("more like this") into a vector, then asks ``vector_search.nearest``
for the closest embedded images that pass the metadata filters, with the
filters inside the same database query. Searches run on a read replica when
one is configured and current (imagesearch/replicas.py), else on the primary.
"""

from __future__ import annotations

import math
import time

import numpy as np
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import F, Q
from django.utils.translation import gettext as _

from catalog.embedder import get_embedder
from catalog.imaging import ImageRejected, decode_image
from catalog.models import Embedding, EmbeddingSpace, Image
from catalog.spaces import embedder_for, space_for_search
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
MAX_ATTRIBUTE_FILTERS = 20
BROWSE_SORTS = ("added", "taken")  # newest added first, or by date taken (undated last)
MAX_BROWSE_PAGE = 10_000  # OFFSET pagination: deeper pages cost a scan of everything before them
BROWSE_COUNT_LIMIT = 10_000  # browse counts matches exactly up to this many, then says "more than"
MIN_REGION_SIDE = 16  # pixels of the source: a smaller box holds too little to search by
REGION_DECODE_MAX_SIDE = 2048  # bounds a region search's decode to ~12 MP of a 1:3 picture
_REGION_SLACK = 1e-6  # x + width may exceed 1 by rounding (a client sending 6 decimals, float sums)


class SearchError(ValueError):
    """Bad search input; the message is meant for the user."""


class SearchBusy(SearchError):
    """The server cannot take this search now (every slot for it is taken): a 503, to try again."""


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
    attributes: tuple[tuple[str, str], ...] = ()  # (name, value) pairs, all must match (Image.attributes)
    tags: tuple[str, ...] = ()       # all of them (Image.tags)

    def __post_init__(self):
        if len(self.attributes) > MAX_ATTRIBUTE_FILTERS or len(self.tags) > MAX_ATTRIBUTE_FILTERS:
            raise SearchError(_("At most %(max)d attribute and %(max)d tag filters.") % {"max": MAX_ATTRIBUTE_FILTERS})
        if self.orientation and self.orientation not in ORIENTATIONS:
            raise SearchError(_("orientation must be one of %(choices)s.") % {"choices": ", ".join(ORIENTATIONS)})
        for low, high, label in ((self.min_width, self.max_width, "width"),
                                 (self.min_height, self.max_height, "height"),
                                 (self.taken_from, self.taken_to, "date")):
            if low is not None and high is not None and low > high:
                raise SearchError({"width": _("The width range is empty: minimum is above maximum."),
                                   "height": _("The height range is empty: minimum is above maximum."),
                                   "date": _("The date range is empty: minimum is above maximum.")}[label])

    def embedding_q(self) -> Q:
        """The filters over Embedding's copies of the image columns (what a search uses)."""
        # Attributes and tags are not copied to the embedding rows: the filter joins catalog_image
        # (its GIN indexes find the matches), in the count and the ranking alike, since both filter
        # the same queryset (vector_search.nearest). Copies would put a JSON document in every
        # embedding row (the exact scans read them all) and more trigger work on every import, for a
        # filter that is rare and usually narrow, where the join costs little.
        return self.as_q(orientation_column=True, image_prefix="image__")

    def as_q(self, prefix: str = "", *, orientation_column: bool = False, image_prefix: str | None = None) -> Q:
        def q(lookup: str, value) -> Q:
            return Q(**{prefix + lookup: value})

        image_prefix = prefix if image_prefix is None else image_prefix
        result = Q()
        for name, value in self.attributes:
            result &= _attribute_q(image_prefix + "attributes__contains", name, value)
        if self.tags:
            result &= Q(**{image_prefix + "tags__contains": list(self.tags)})
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


def _attribute_q(lookup: str, name: str, value: str) -> Q:
    """``name`` equals ``value``: as text, or as the number or boolean it spells (manifest
    attributes keep JSON types; a query string carries text)."""
    matches = Q(**{lookup: {name: value}})
    if value in ("true", "false"):
        matches |= Q(**{lookup: {name: value == "true"}})
    else:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            matches |= Q(**{lookup: {name: int(number) if number.is_integer() else number}})
    return matches


@dataclass(frozen=True)
class Region:
    """A box of a picture, relative to its upright (EXIF-applied) frame: 0..1 from the top left."""

    x: float
    y: float
    width: float
    height: float

    def __post_init__(self):
        values = (self.x, self.y, self.width, self.height)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise SearchError(_("The region's x, y, width and height must be finite numbers."))
        if self.x < 0 or self.y < 0:
            raise SearchError(_("The region must start inside the picture: x and y must be at least 0."))
        if self.width <= 0 or self.height <= 0:
            raise SearchError(_("The region's width and height must be above 0."))
        if self.x + self.width > 1 + _REGION_SLACK or self.y + self.height > 1 + _REGION_SLACK:
            raise SearchError(_("The region must end inside the picture: x + width and y + height must be at most 1."))

    def decode_min_side(self, min_side: int) -> int:
        """The shorter side a picture may be decoded down to while this region keeps ``min_side``;
        at most REGION_DECODE_MAX_SIDE, so a tiny box never makes a request decode a huge picture at
        full size (the box then has fewer pixels, and one under MIN_REGION_SIDE is refused)."""
        return min(REGION_DECODE_MAX_SIDE, math.ceil(min_side / max(min(self.width, self.height),
                                                                    min_side / REGION_DECODE_MAX_SIDE)))

    def crop(self, picture: "PILImage") -> "PILImage":
        width, height = picture.size
        left, top = round(self.x * width), round(self.y * height)
        right = min(width, round((self.x + self.width) * width))
        bottom = min(height, round((self.y + self.height) * height))
        if right - left < MIN_REGION_SIDE or bottom - top < MIN_REGION_SIDE:
            raise SearchError(_("The region is only %(region)s pixels of this %(size)s picture: make it at least "
                                "%(min)d pixels wide and high.") % {"region": f"{right - left}x{bottom - top}",
                                                                   "size": f"{width}x{height}", "min": MIN_REGION_SIDE})
        return picture.crop((left, top, right, bottom))


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
    region: Region | None = None         # search by this box of ``image`` or of similar_to's stored file

    def __post_init__(self):
        object.__setattr__(self, "text", self.text.strip())
        if self.region is not None and self.image is None and self.similar_to is None:
            raise SearchError(_("A region is a box of a picture: send it with an uploaded image or with similar_to."))
        given = sum((bool(self.text), self.image is not None, self.similar_to is not None))
        if given != 1:
            raise SearchError(_("Give exactly one of: a text query, a query image, or an image to find similar ones "
                                "to."))
        if not (1 <= self.top_k <= MAX_TOP_K):
            raise SearchError(_("top_k must be between 1 and %(max)d.") % {"max": MAX_TOP_K})
        if not (1 <= self.page <= MAX_PAGE):
            raise SearchError(_("page must be between 1 and %(max)d.") % {"max": MAX_PAGE})
        if self.page * self.top_k > MAX_DEPTH:
            # Deeper than this, no plan can rank the rows exactly at an affordable cost; refusing
            # is better than pages that silently skip rows.
            raise SearchError(_("Results go %(depth)d deep at most: with top_k=%(top_k)d the last page is %(last)d. "
                                "Narrow the search with filters to see other results.")
                              % {"depth": MAX_DEPTH, "top_k": self.top_k, "last": MAX_DEPTH // self.top_k})
        if self.min_score is not None and not (-1.0 <= self.min_score <= 1.0):
            raise SearchError(_("min_score must be between -1 and 1."))


@dataclass(frozen=True)
class SearchHit:
    image: Image
    score: float | None  # cosine similarity, -1..1, higher is closer; None when browsing


@dataclass(frozen=True)
class SearchResults:
    hits: list[SearchHit]
    page: int
    has_next: bool
    encode_ms: float
    database_ms: float
    database: str = "default"        # the database alias that served it (a replica or the primary)
    depth_limit_reached: bool = False  # more results exist, but past the deepest page served


def _failing_over(run, using: str):
    """``run(using)``; if the replica ``using`` fails mid-query it is skipped and the primary answers."""
    try:
        return run(using)
    except (OperationalError, InterfaceError):
        if using == "default":
            raise
        replicas.mark_down(using)
        return run("default")


def images_search(*, params: SearchParams) -> SearchResults:
    using = replicas.search_database()
    try:
        return _failing_over(lambda database: _search(params, database), using)
    except SearchError:
        if using == "default" or params.similar_to is None:
            raise
        # "More like this" on an image the replica has not replayed yet: the primary has it.
        return _search(params, "default")


def _search(params: SearchParams, using: str) -> SearchResults:
    started = time.perf_counter()
    # The active space, read once per search from the database that holds the vectors: a switch
    # (catalog.spaces.activate) reaches every process at once, and the query vector always comes
    # from the model of the space it is compared with. No space yet: nothing to find.
    space = space_for_search(using=using)
    embedder = embedder_for(space) if space is not None else get_embedder()
    if params.region is not None:
        picture = params.image if params.image is not None else _stored_picture(params.similar_to, params.region,
                                                                                  using)
        vector = embedder.embed_images([params.region.crop(picture)])[0]
    elif params.similar_to is not None:
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


@dataclass(frozen=True)
class BrowseResults:
    hits: list[SearchHit]
    count: int        # images matching the filters, counted up to BROWSE_COUNT_LIMIT (+1: more than that)
    page: int
    per_page: int
    more: bool = False  # another row follows this page

    @property
    def count_limit(self) -> int:
        return BROWSE_COUNT_LIMIT

    @property
    def count_exact(self) -> bool:
        return self.count <= self.count_limit

    @property
    def num_pages(self) -> int | None:
        return max(1, -(-self.count // self.per_page)) if self.count_exact else None

    @property
    def has_next(self) -> bool:
        return self.more and self.page < MAX_BROWSE_PAGE

    @property
    def first_index(self) -> int:
        return (self.page - 1) * self.per_page + 1


def images_browse(*, filters: ImageFilters, sort: str = "added", page: int = 1, per_page: int = 24) -> BrowseResults:
    """The collection without a query, filtered like a search, with the count of matches (exact up
    to BROWSE_COUNT_LIMIT), newest first by the image_browse_* indexes."""
    if sort not in BROWSE_SORTS:
        raise SearchError(f"sort must be one of {', '.join(BROWSE_SORTS)}.")
    if not (1 <= page <= MAX_BROWSE_PAGE):
        raise SearchError(f"page must be between 1 and {MAX_BROWSE_PAGE}.")
    if not (1 <= per_page <= MAX_TOP_K):
        raise SearchError(f"top_k must be between 1 and {MAX_TOP_K}.")
    return _failing_over(lambda database: _browse(filters, sort, page, per_page, database),
                         replicas.search_database())


def _browse(filters: ImageFilters, sort: str, page: int, per_page: int, using: str) -> BrowseResults:
    images = Image.objects.using(using).exclude(status=Image.Status.FAILED).filter(filters.as_q())
    order = (["-created_at", "-id"] if sort == "added"
             else [F("taken_at").desc(nulls_last=True), "-created_at", "-id"])
    offset = (page - 1) * per_page
    rows = list(images.order_by(*order)[offset:offset + per_page + 1])
    # Counted up to a limit: an exact count of a million rows costs a second on every page.
    count = images.values("pk")[:BROWSE_COUNT_LIMIT + 1].count()
    return BrowseResults(hits=[SearchHit(image=image, score=None) for image in rows[:per_page]],
                         count=count, page=page, per_page=per_page, more=len(rows) > per_page)


def stored_image(*, image_id: int) -> Image | None:
    """The reference picture of a "more like this" search, to show what was searched."""
    return Image.objects.filter(pk=image_id).first()


def _stored_vector(space: EmbeddingSpace | None, image_id: int, using: str):
    """The stored vector of an image in the current space: "more like this" never re-embeds."""
    vector = None
    if space is not None:
        vector = (Embedding.objects.using(using).filter(space=space, image_id=image_id)
                  .values_list("vector", flat=True).first())
    if vector is None:
        if not Image.objects.using(using).filter(pk=image_id).exists():
            raise ImageNotFound(_("Image %(id)d does not exist.") % {"id": image_id})
        raise SearchError(_("Image %(id)d has no embedding for the current model yet.") % {"id": image_id})
    return np.asarray(vector, dtype=np.float32)


def _stored_picture(image_id: int, region: Region, using: str) -> "PILImage":
    """A stored image's file, upright, decoded no larger than ``region`` needs (and within the upload limits).

    Decoded in the web process: within the pipeline's (format-weighted) caps, which a file stored before
    they were lowered may now exceed, and in one of the process's query decode slots."""
    from catalog.search_input import QUERY_IMAGE_MIN_SIDE, query_decode_slot, rejection_reason  # imports this module

    image = Image.objects.using(using).filter(pk=image_id).first()
    if image is None:
        raise ImageNotFound(_("Image %(id)d does not exist.") % {"id": image_id})
    try:
        with query_decode_slot(), image.file.storage.open(image.file.name, "rb") as stored:
            return decode_image(stored, max_pixels=settings.IMAGE_MAX_PIXELS,
                                min_side=region.decode_min_side(QUERY_IMAGE_MIN_SIDE),
                                max_aspect_ratio=settings.IMAGE_MAX_ASPECT_RATIO).image
    except ImageRejected as rejected:
        raise SearchError(_("The stored file of image %(id)d could not be read: %(reason)s.")
                          % {"id": image_id, "reason": rejection_reason(rejected)}) from None
    except OSError:
        raise SearchError(_("The stored file of image %(id)d is missing.") % {"id": image_id}) from None


def similar_images(*, image_id: int, top_k: int = 12) -> list[SearchHit]:
    """Nearest neighbours of a stored image (the detail page)."""
    return images_search(params=SearchParams(similar_to=image_id, top_k=top_k)).hits
