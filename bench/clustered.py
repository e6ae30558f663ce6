"""Clustered, correlated test collections: vectors, metadata, queries, filter cases, exact ground truth.

Real collections are not random vectors: a trip's photos lie close together in CLIP space *and*
share a city, a camera and a few days, and bursts leave near-duplicates. Filters therefore
correlate with the vectors, which is what defeats a filtered graph walk. ``make_collection``
draws such a collection (deterministic from its seed, 1M x 512 in seconds):

* vectors: C clusters (default min(1000, n // 100)) of Zipf-like sizes, each with a few sub-scenes,
  on a random low-rank basis (intrinsic dimension 48) with a shared mean direction (random photos
  have cosine ~0.3, as CLIP embeddings do) plus a little isotropic noise; unit float32.
* city: each cluster has a home city (one "home town" is home to about a third of the clusters)
  that 60% of its photos share; the rest come from a Zipf list of 120 cities, some empty.
* width/height: a cluster is shot mostly with one camera (landscape, portrait, a few square crops),
  plus screenshots and web images from a common list and some arbitrary sizes (crops).
* taken_at: a trip lasts a few days somewhere in 2008-2025; some clusters (scans) and some single
  photos have no date (NaT).
* group_key: bursts of 2-5 near-identical shots share a key; other photos have "".

``make_queries`` draws query vectors near the collection's content (never rows of it),
``filter_cases`` the filters a search must get right (with numpy masks of exactly the rows each
matches), ``exact_neighbours`` the ground truth, and ``load_collection`` puts a collection into the
real tables (binary COPY) for tests and bench/search_db.py.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import NamedTuple

import numpy as np

INTRINSIC_DIMS = 48
SUBSCENES = 4
CHUNK = 65_536

CITIES = [
    "Springfield", "Paris", "London", "New York", "Tokyo", "Berlin", "Barcelona", "Rome", "Lisbon", "Amsterdam",
    "Vienna", "Prague", "Budapest", "Madrid", "Istanbul", "Bangkok", "Singapore", "Sydney", "Melbourne", "Toronto",
    "Vancouver", "Chicago", "San Francisco", "Los Angeles", "Seattle", "Boston", "Mexico City", "Buenos Aires",
    "Rio de Janeiro", "Lima", "Cape Town", "Nairobi", "Cairo", "Marrakesh", "Dubai", "Mumbai", "Delhi", "Beijing",
    "Shanghai", "Hong Kong", "Seoul", "Kyoto", "Osaka", "Taipei", "Hanoi", "Bali", "Auckland", "Reykjavik", "Oslo",
    "Stockholm", "Copenhagen", "Helsinki", "Dublin", "Edinburgh", "Brussels", "Zurich", "Geneva", "Munich",
    "Hamburg", "Milan", "Venice", "Florence", "Naples", "Athens", "Dubrovnik", "Krakow", "Warsaw", "Tallinn",
    "Riga", "Vilnius", "Porto", "Seville", "Valencia", "Nice", "Lyon", "Marseille", "Bordeaux", "Salzburg",
    "Innsbruck", "Ljubljana", "Zagreb", "Sarajevo", "Belgrade", "Sofia", "Bucharest", "Tbilisi", "Yerevan",
    "Baku", "Tashkent", "Samarkand", "Kathmandu", "Colombo", "Male", "Perth", "Hobart", "Queenstown", "Fiji",
    "Honolulu", "Anchorage", "Havana", "Cartagena", "Quito", "Cusco", "La Paz", "Santiago", "Montevideo",
    "Ushuaia", "Windhoek", "Zanzibar", "Accra", "Dakar", "Tunis", "Amman", "Petra", "Muscat", "Doha", "Ulaanbaatar",
    "Lhasa", "Longyearbyen",
]
# Photos without GPS have no city: "" takes the place of a mid-ranked city.
CITIES[20] = ""
# A phone or camera shoots one frame size, turned either way (and some square crops).
CAMERAS = [(4032, 3024), (4000, 3000), (4624, 3472), (6000, 4000), (5472, 3648), (3264, 2448), (2592, 1944),
           (4080, 3072), (8064, 6048), (3840, 2160)]
# Screenshots, web and messenger images: any trip has a few.
COMMON_SIZES = [(1920, 1080), (1080, 1920), (1080, 1080), (1024, 1024), (800, 600), (600, 800), (1280, 720),
                (720, 1280), (3840, 2160), (640, 480), (2048, 1536), (1600, 1200), (1170, 2532), (1284, 2778)]
EPOCH_START = np.datetime64("2008-01-01T00:00:00", "s")
EPOCH_SECONDS = int((np.datetime64("2025-12-31T00:00:00", "s") - EPOCH_START).astype(np.int64))


@dataclass
class Collection:
    """A generated collection: row i of every array describes image i (numpy arrays, same length)."""

    vectors: np.ndarray    # (n, dims) float32, unit
    city: np.ndarray       # str
    width: np.ndarray      # int32
    height: np.ndarray     # int32
    taken_at: np.ndarray   # datetime64[us] (UTC), NaT when unknown
    group_key: np.ndarray  # str, "" outside bursts
    cluster: np.ndarray    # int32
    seed: int = 0
    # The generating model, for make_queries: latent scene centres, spreads, basis.
    _scenes: np.ndarray = field(default=None, repr=False)
    _spread: np.ndarray = field(default=None, repr=False)
    _basis: np.ndarray = field(default=None, repr=False)
    _noise: float = 0.0

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dims(self) -> int:
        return self.vectors.shape[1]


class FilterCase(NamedTuple):
    label: str
    filters: object  # catalog.search.ImageFilters
    mask: np.ndarray  # bool, the rows the filters match


def _zipf(count: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return weights / weights.sum()


def make_collection(n: int, *, dims: int = 512, seed: int = 0, clusters: int | None = None,
                    home_share: float = 0.6, burst_share: float = 0.04) -> Collection:
    """Draw ``n`` images in ``clusters`` trips (see the module docstring); the same seed, the same data."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(1, min(1000, n // 100))

    # Trip sizes: Zipf-like, but every trip has photos.
    sizes = np.bincount(rng.choice(clusters, size=n, p=_zipf(clusters, 0.8)), minlength=clusters)
    empty = np.flatnonzero(sizes == 0)
    for c in empty:  # take one photo from the largest trip
        sizes[np.argmax(sizes)] -= 1
        sizes[c] = 1
    # Rows in import order: trip after trip, with 15% of the photos added at other times.
    cluster = np.repeat(np.arange(clusters, dtype=np.int32), sizes)[np.argsort(
        np.repeat(rng.random(clusters), sizes) + 1e-9 * np.arange(n), kind="stable")]
    moved = np.sort(rng.choice(n, size=int(0.15 * n), replace=False))
    cluster[moved] = cluster[rng.permutation(moved)]

    # Bursts: 2-5 consecutive near-identical shots; a copy takes everything from its burst's first shot.
    base = np.arange(n)
    for start in np.flatnonzero(rng.random(n) < burst_share / 3.5):
        if base[start] == start:
            base[start + 1:start + rng.integers(2, 6)] = start
    copies = np.flatnonzero(base != np.arange(n))
    cluster[copies] = cluster[base[copies]]

    # Metadata per trip, then per photo.
    city_p = np.concatenate([[0.35], 0.65 * _zipf(len(CITIES) - 1, 1.1)])
    home = rng.choice(len(CITIES), size=clusters, p=city_p)
    city_idx = np.where(rng.random(n) < home_share, home[cluster], rng.choice(len(CITIES), size=n, p=city_p))
    city = np.array(CITIES, dtype=object)[city_idx]

    camera = rng.integers(0, len(CAMERAS), size=clusters)
    cam_w, cam_h = np.array(CAMERAS).T
    kind = rng.random(n)
    turn = rng.random(n)
    long_side, short_side = cam_w[camera[cluster]], cam_h[camera[cluster]]
    width = np.where(turn < 0.65, long_side, np.where(turn < 0.95, short_side, short_side))
    height = np.where(turn < 0.65, short_side, np.where(turn < 0.95, long_side, short_side))
    common = rng.integers(0, len(COMMON_SIZES), size=n)
    com_w, com_h = np.array(COMMON_SIZES).T
    width = np.where(kind < 0.75, width, com_w[common])
    height = np.where(kind < 0.75, height, com_h[common])
    arbitrary = kind > 0.96  # crops and edits: any size
    width = np.where(arbitrary, rng.integers(200, 9000, size=n), width).astype(np.int32)
    height = np.where(arbitrary, rng.integers(200, 9000, size=n), height).astype(np.int32)

    trip_start = rng.integers(0, EPOCH_SECONDS, size=clusters)
    trip_length = (rng.uniform(0.2, 6.0, size=clusters) * 86400).astype(np.int64)
    seconds = trip_start[cluster] + (rng.random(n) * trip_length[cluster]).astype(np.int64)
    taken_at = (EPOCH_START + seconds.astype("timedelta64[s]")).astype("datetime64[us]")
    undated = (rng.random(clusters) < 0.04)[cluster] | (rng.random(n) < 0.03)  # scans; stripped EXIF
    taken_at[undated] = np.datetime64("NaT")

    offset = (np.arange(n) - base)[copies]  # a burst: one shot a second
    city[copies], width[copies], height[copies] = city[base[copies]], width[base[copies]], height[base[copies]]
    taken_at[copies] = taken_at[base[copies]] + offset.astype("timedelta64[s]")
    in_burst = np.zeros(n, dtype=bool)
    in_burst[copies] = in_burst[base[copies]] = True
    group_key = np.full(n, "", dtype=object)
    group_key[in_burst] = [f"burst-{seed}-{b}" for b in base[in_burst]]

    # Vectors: mean direction + trip centre + sub-scene, spread within it, on a low-rank basis.
    r = min(INTRINSIC_DIMS, dims)
    basis = np.linalg.qr(rng.standard_normal((dims, r)))[0].T.astype(np.float32)  # (r, dims), orthonormal rows
    mean = rng.standard_normal(r)
    mean *= np.sqrt(0.43 * r) / np.linalg.norm(mean)  # random pairs: cosine ~0.3
    centres = rng.standard_normal((clusters, r))
    scenes = (mean + centres[:, None, :] + 0.5 * rng.standard_normal((clusters, SUBSCENES, r))).astype(np.float32)
    spread = rng.uniform(0.35, 0.6, size=clusters).astype(np.float32)
    noise = 0.08
    scene = rng.integers(0, SUBSCENES, size=n)
    vectors = np.empty((n, dims), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        c = cluster[start:stop]
        latent = scenes[c, scene[start:stop]] + spread[c, None] * rng.standard_normal((stop - start, r), np.float32)
        chunk = latent @ basis
        chunk += noise * rng.standard_normal((stop - start, dims), np.float32)
        vectors[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    # A copy is its burst's first shot, moved a little (cosine ~0.999).
    for start in range(0, len(copies), CHUNK):
        rows = copies[start:start + CHUNK]
        moved_vectors = vectors[base[rows]] + (0.05 / np.sqrt(dims)) * rng.standard_normal((len(rows), dims),
                                                                                        np.float32)
        vectors[rows] = moved_vectors / np.linalg.norm(moved_vectors, axis=1, keepdims=True)

    return Collection(vectors=vectors, city=city.astype(str), width=width, height=height, taken_at=taken_at,
                      group_key=group_key.astype(str), cluster=cluster, seed=seed,
                      _scenes=scenes, _spread=spread, _basis=basis, _noise=noise)


def make_queries(collection: Collection, count: int, *, seed: int) -> np.ndarray:
    """``count`` unit query vectors like real ones, none of them a row of the collection: 60% aim at
    a trip's scene (trips picked by size, as people search what they have), 40% are a perturbed
    photo of the collection (cosine ~0.9 to it)."""
    rng = np.random.default_rng([seed, collection.seed, 7])
    n, dims = collection.vectors.shape
    r = collection._basis.shape[0]
    queries = np.empty((count, dims), dtype=np.float32)
    clusters = len(collection._scenes)
    weights = np.bincount(collection.cluster, minlength=clusters) / n
    for i in range(count):
        if rng.random() < 0.6:
            c = rng.choice(clusters, p=weights)
            latent = collection._scenes[c, rng.integers(SUBSCENES)] + 0.5 * collection._spread[c] * rng.standard_normal(r)
            q = latent @ collection._basis + collection._noise * rng.standard_normal(dims)
            q /= np.linalg.norm(q)
        else:
            q = collection.vectors[rng.integers(n)].astype(np.float64)
            q = q + 0.45 * rng.standard_normal(dims) / np.sqrt(dims)
            q /= np.linalg.norm(q)
        queries[i] = q
    return queries


# --- ground truth ---------------------------------------------------------------------------------

def exact_neighbours(collection: Collection, mask: np.ndarray | None, query: np.ndarray, k: int,
                     exclude: int | None = None, *, scores: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``k`` rows among ``mask`` with the highest float32 dot product with ``query``
    (ties by position), best first. ``exclude``: a position never returned. ``scores``: the rows'
    scores for this query if already computed (see ``all_scores``)."""
    if scores is None:
        scores = collection.vectors @ np.asarray(query, dtype=np.float32)
    candidates = np.arange(len(scores)) if mask is None else np.flatnonzero(mask)
    if exclude is not None:
        candidates = candidates[candidates != exclude]
    s = scores[candidates]
    if len(candidates) > k:
        threshold = s[np.argpartition(-s, k - 1)[k - 1]]
        keep = s >= threshold  # every row tied at the boundary, then ties by position
        candidates, s = candidates[keep], s[keep]
    order = np.lexsort((candidates, -s))
    return candidates[order[:k]]


def all_scores(collection: Collection, queries: np.ndarray) -> np.ndarray:
    """(rows, queries) float32 dot products: one matrix product for every query's ground truth."""
    out = np.empty((len(collection), len(queries)), dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32).T
    for start in range(0, len(collection), 4 * CHUNK):
        out[start:start + 4 * CHUNK] = collection.vectors[start:start + 4 * CHUNK] @ q
    return out


def image_ids_of(positions: np.ndarray, image_ids: np.ndarray) -> list[int]:
    """The image ids (from ``load_collection``) of positions."""
    return [int(i) for i in np.asarray(image_ids)[positions]]


def recall(found, truth) -> float:
    """|found ∩ truth| / |truth| (1.0 when nothing should be found and nothing was)."""
    truth = set(truth)
    return len(set(found) & truth) / len(truth) if truth else float(not list(found))


# --- filter cases ---------------------------------------------------------------------------------

def _day(value: np.datetime64) -> date:
    return value.astype("datetime64[D]").astype(date)


def filter_cases(collection: Collection) -> list[FilterCase]:
    """The filters a search must get right on this collection, each with the mask of rows it matches
    under ``ImageFilters`` semantics (sizes inclusive, dates whole UTC days inclusive, NULL dates
    never match a date bound)."""
    from catalog.search import ImageFilters

    c = collection
    n = len(c)
    cases: list[FilterCase] = []

    def add(label: str, **filters) -> None:
        f = ImageFilters(**filters)
        cases.append(FilterCase(label, f, mask_of(c, f)))

    add("no filter")

    # Single cities across selectivities (by their share of the rows, nearest to each target).
    names, counts = np.unique(c.city[c.city != ""], return_counts=True)
    taken: set[str] = set()
    for target in (0.0003, 0.001, 0.003, 0.01, 0.02, 0.04, 0.08, 0.15, 0.40):
        choice = names[np.argmin(np.abs(np.log(counts / n) - np.log(target)) + np.isin(names, list(taken)) * 99)]
        if choice not in taken:
            taken.add(choice)
            add(f"city {choice} ({np.sum(c.city == choice) / n:.2%})", cities=(str(choice),))
    add("city not in collection (0 rows)", cities=("Atlantis",))
    by_count = names[np.argsort(counts)]
    add("2 mid-size cities", cities=tuple(str(x) for x in by_count[len(by_count) // 2:len(by_count) // 2 + 2]))
    add("5 rare cities", cities=tuple(str(x) for x in by_count[:5]))
    add("3 cities incl. the largest", cities=tuple(str(x) for x in by_count[[-1, len(by_count) // 2, 0]]))

    # Correlated size pairs: each bound alone matches many rows, both together few (wide and short,
    # or narrow and tall: arbitrary crops only), so the planner's independence guess is far too high.
    for exact in (0, 1, 5, 9, 10, 11, 50, 500):
        found = _size_pair(c, exact)
        if found is not None:
            add(f"{exact} rows (correlated sizes)", **found)
    # The other way round: a city and its trips' camera match more than the planner guesses.
    top_city = by_count[-1]
    mid = names[np.argmin(np.abs(counts / n - 0.03))]
    w, h = _most_common_size(c, c.city == mid)
    add(f"city {mid} + its camera size (correlated)", cities=(str(mid),), min_width=w, max_width=w,
        min_height=h, max_height=h)

    for orientation in ("landscape", "portrait", "square"):
        add(f"orientation {orientation}", orientation=orientation)

    # Dates: one day of a mid-size trip, a month, one year, five years, open ranges.
    sizes = np.bincount(c.cluster)
    trip = int(np.argsort(sizes)[len(sizes) * 3 // 4])
    dated = c.taken_at[(c.cluster == trip) & ~np.isnat(c.taken_at)]
    if len(dated):
        day = _day(dated.min())
        add("date: one day of a trip", taken_from=day, taken_to=day)
        add("date: one month", taken_from=day.replace(day=1), taken_to=(day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1))
    add("date: 2025", taken_from=date(2025, 1, 1), taken_to=date(2025, 12, 31))  # the largest year at 1,000,000
    add("date: 2015-2019", taken_from=date(2015, 1, 1), taken_to=date(2019, 12, 31))
    add("date: before 2010", taken_to=date(2009, 12, 31))
    add("date: from 2024", taken_from=date(2024, 1, 1))

    # Combinations.
    add(f"city {mid} + portrait", cities=(str(mid),), orientation="portrait")
    add(f"city {top_city} + square", cities=(str(top_city),), orientation="square")
    if len(dated):
        add(f"city {top_city} + one month", cities=(str(top_city),), taken_from=day.replace(day=1),
            taken_to=day.replace(day=28))
    add(f"city {mid} + 2015-2019", cities=(str(mid),), taken_from=date(2015, 1, 1), taken_to=date(2019, 12, 31))
    add(f"city {top_city} + landscape + min_width 4000", cities=(str(top_city),), orientation="landscape",
        min_width=4000)
    return cases


def _size_pair(c: Collection, exact: int) -> dict | None:
    """Size bounds matching exactly ``exact`` rows, each bound alone matching many."""
    for wide, bound in ((True, 4000), (True, 3500), (False, 4000), (True, 5000), (False, 3000), (True, 3000)):
        big, small = (c.width, c.height) if wide else (c.height, c.width)
        values = np.sort(small[big >= bound])
        if len(values) <= exact:
            continue
        if exact == 0:
            limit = int(values[0]) - 1
        elif values[exact] > values[exact - 1]:
            limit = int(values[exact - 1])
        else:
            continue
        if limit < 1:
            continue
        if wide:
            return {"min_width": bound, "max_height": limit}
        return {"min_height": bound, "max_width": limit}
    return None


def _most_common_size(c: Collection, mask: np.ndarray) -> tuple[int, int]:
    pairs, counts = np.unique(np.stack([c.width[mask], c.height[mask]], axis=1), axis=0, return_counts=True)
    w, h = pairs[np.argmax(counts)]
    return int(w), int(h)


def mask_of(c: Collection, f) -> np.ndarray:
    """The rows ``ImageFilters`` f matches (the semantics of ``ImageFilters.as_q``)."""
    mask = np.ones(len(c), dtype=bool)
    if f.cities:
        mask &= np.isin(c.city, list(f.cities))
    for values, low, high in ((c.width, f.min_width, f.max_width), (c.height, f.min_height, f.max_height)):
        if low is not None:
            mask &= values >= low
        if high is not None:
            mask &= values <= high
    if f.taken_from is not None:
        mask &= c.taken_at >= np.datetime64(f.taken_from, "us")  # NaT compares False: NULL never matches
    if f.taken_to is not None and f.taken_to < date.max:
        mask &= c.taken_at < np.datetime64(f.taken_to + timedelta(days=1), "us")
    if f.orientation == "landscape":
        mask &= c.width > c.height
    elif f.orientation == "portrait":
        mask &= c.width < c.height
    elif f.orientation == "square":
        mask &= c.width == c.height
    return mask


# --- loading into the real tables ----------------------------------------------------------------

# Binary COPY header and trailer (PostgreSQL "COPY ... FORMAT BINARY").
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH = np.datetime64("2000-01-01T00:00:00", "us")


def load_collection(collection: Collection, *, space_name: str, dims: int | None = None,
                    build_index: bool = True, timings: dict | None = None):
    """Store ``collection`` as images with embeddings in a new space ``space_name``; returns
    (space, image ids by position). Images and embeddings are COPYed; the space's HNSW index is
    built after the load (in memory, timed into ``timings``) and the planner statistics refreshed.
    The embeddings' copies of the image columns are filled by the database's triggers."""
    from django.db import connection
    from django.utils import timezone

    from catalog import vector_search
    from catalog.models import Embedding, EmbeddingSpace

    timings = {} if timings is None else timings
    n, dims = len(collection), dims or collection.dims
    space = EmbeddingSpace.objects.create(name=space_name, dimensions=dims)  # no index yet: built after the load
    tag = hashlib.sha256(space_name.encode()).hexdigest()[:8]
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # Reserve n consecutive ids: image i gets first + i.
        cursor.execute("SELECT pg_get_serial_sequence('catalog_image', 'id')")
        sequence = cursor.fetchone()[0]
        cursor.execute("LOCK TABLE catalog_image IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(f"SELECT nextval('{sequence}')")
        first = cursor.fetchone()[0]
        cursor.execute(f"SELECT setval('{sequence}', %s)", [first + n - 1])
        image_ids = first + np.arange(n, dtype=np.int64)
        now = timezone.now().isoformat()
        taken = np.char.add(np.datetime_as_string(collection.taken_at, unit="s"), "+00")
        taken[np.isnat(collection.taken_at)] = "\\N"
        with cursor.cursor.copy(
                "COPY catalog_image (id, file, thumbnail, sha256, original_name, width, height, city, group_key, "
                "taken_at, source, source_ref, created_at, status, status_reason, title, tags, attributes) "
                "FROM STDIN") as copy:
            for start in range(0, n, CHUNK):
                copy.write("".join(
                    f"{first + i}\tbench/{tag}/{i}.jpg\t\t{tag}{i:056x}\t{i}.jpg\t{collection.width[i]}\t"
                    f"{collection.height[i]}\t{collection.city[i]}\t{collection.group_key[i]}\t"
                    f"{taken[i]}\tfolder\t\t{now}\tembedded\t\t\t{{}}\t{{}}\n"  # no title, tags or attributes
                    for i in range(start, min(n, start + CHUNK))))
        timings["images_s"] = time.perf_counter() - started

        # Embeddings: fixed-size binary rows written by numpy in bulk (pgvector's per-row dumper
        # costs ~10 us a row: 10 s at 1M).
        started = time.perf_counter()
        record = np.dtype([("fields", ">i2"), ("l1", ">i4"), ("image_id", ">i8"), ("l2", ">i4"), ("space_id", ">i8"),
                           ("l3", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vector", ">f2", (dims,)),
                           ("l4", ">i4"), ("created_at", ">i8")])
        created = int((np.datetime64(timezone.now().replace(tzinfo=None), "us") - _PG_EPOCH).astype(np.int64))
        with cursor.cursor.copy("COPY catalog_embedding (image_id, space_id, vector, created_at) "
                                "FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_COPY_SIGNATURE)
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                rows = np.zeros(stop - start, dtype=record)
                rows["fields"], rows["l1"], rows["l2"], rows["l4"] = 4, 8, 8, 8
                rows["l3"], rows["dim"] = 4 + 2 * dims, dims
                rows["image_id"], rows["space_id"], rows["created_at"] = image_ids[start:stop], space.pk, created
                rows["vector"] = collection.vectors[start:stop, :dims]
                copy.write(rows.tobytes())
            copy.write(_COPY_TRAILER)
        timings["embeddings_s"] = time.perf_counter() - started

    if build_index:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '3GB'")  # the whole graph in memory: a fast build
            connection.check_constraints()  # deferred FK checks pending would block CREATE INDEX
            with connection.schema_editor() as editor:
                editor.add_index(Embedding, space.hnsw_index())
            cursor.execute("RESET maintenance_work_mem")
        timings["index_s"] = time.perf_counter() - started
    vector_search.refresh_planner_statistics()
    return space, image_ids
