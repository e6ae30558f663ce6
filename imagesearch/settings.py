"""Settings for imagesearch. Every knob comes from an environment variable,
parsed strictly (see imagesearch/env.py and the table in README.md)."""

from datetime import timedelta
from pathlib import Path
import secrets

from csp.constants import NONCE as CSP_NONCE

from django.core.exceptions import ImproperlyConfigured

from imagesearch.env import Env, parse_database_url
from imagesearch.machine import usable_cores, usable_memory

env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env.path("IMAGESEARCH_DATA_DIR", BASE_DIR / "var")

DEBUG = env.bool("IMAGESEARCH_DEBUG", False)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the data folder."""
    configured = env.str("IMAGESEARCH_SECRET_KEY")
    if configured:
        return configured
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("IMAGESEARCH_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("IMAGESEARCH_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.postgres",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "axes",
    "corsheaders",
    "csp",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_tasks",
    "django_tasks_db",
    "catalog",
]

MIDDLEWARE = [
    # /healthz and /readyz, ahead of the host check and the https redirect (imagesearch/health.py).
    "imagesearch.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Over-long URLs, NUL in query strings; every error under /api/ in the JSON error shape.
    "catalog.request_input.RequestInputMiddleware",
    # Database down or restarting: 503 (JSON under /api/) instead of 500, see imagesearch/middleware.py.
    "imagesearch.middleware.DatabaseUnavailableMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Language from the django_language cookie (the switch), else Accept-Language. After WhiteNoise, so
    # static files carry no Vary: Accept-Language; it needs no session (the choice lives in a cookie).
    "django.middleware.locale.LocaleMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns django-axes' lockout flag into a 429 (catalog.accounts.lockout).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "imagesearch.urls"
WSGI_APPLICATION = "imagesearch.wsgi.application"
ASGI_APPLICATION = "imagesearch.asgi.application"  # what bin/serve runs (uvicorn)

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
_database_url = env.str("DATABASE_URL")
if _database_url:
    DATABASES = {"default": parse_database_url(_database_url)}
else:
    # Embedded PostgreSQL + pgvector, started on first connection.
    _memory_mb = usable_memory() // 2**20
    DATABASES = {
        "default": {
            "ENGINE": "imagesearch.embedded_db",
            "NAME": "imagesearch",
            "OPTIONS": {
                "pgdata": str(DATA_DIR / "pgdata"),
                # The HNSW graphs and the vectors must fit in memory for fast searches: a quarter of it,
                # PostgreSQL's own advice (bench/search_db.py --mixed, 1M with value graphs, filters
                # interleaved: 1GB -> 6GB took unfiltered p95 33-36 -> 17-21 ms, filtered cases within
                # 50 ms p95 27-29 -> 35-36 of 36).
                "server_settings": {
                    "shared_buffers": env.str("IMAGESEARCH_EMBEDDED_SHARED_BUFFERS", f"{max(128, _memory_mb // 4)}MB"),
                    "maintenance_work_mem": "512MB",  # HNSW index builds
                    "effective_cache_size": f"{max(512, _memory_mb // 2)}MB",
                    "random_page_cost": "1.1",
                    "jit": "off",
                    # Reads the buffers of before a restart back in (autoprewarm), so that the first
                    # searches after it do not read their graphs page by page.
                    "shared_preload_libraries": "pg_prewarm",
                },
            },
        }
    }
DATABASES["default"]["CONN_MAX_AGE"] = env.int("IMAGESEARCH_DB_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# A database that accepts no connection (frozen, or a black-holed address) costs a request this
# many seconds, then a 503, instead of hanging it. ?connect_timeout= in DATABASE_URL wins.
DATABASES["default"]["OPTIONS"].setdefault(
    "connect_timeout", env.int("IMAGESEARCH_DB_CONNECT_TIMEOUT", 5, minimum=1, maximum=600))
# Read replicas (PostgreSQL streaming standbys): searches only, chosen by imagesearch/replicas.py;
# the router keeps every other query, writes and job claims on the primary.
for _number, _url in enumerate(env.list("DATABASE_REPLICA_URLS", []), start=1):
    _replica = parse_database_url(_url, variable=f"DATABASE_REPLICA_URLS (entry {_number})")
    # Short: a replica that does not answer costs one background health check this long, then is skipped.
    _replica["OPTIONS"].setdefault("connect_timeout", 2)
    _replica.update(CONN_MAX_AGE=DATABASES["default"]["CONN_MAX_AGE"], CONN_HEALTH_CHECKS=True,
                    TEST={"MIRROR": "default"})
    DATABASES[f"replica{_number}"] = _replica
DATABASE_ROUTERS = ["imagesearch.replicas.PrimaryRouter"]
# A replica further behind the primary than this (seconds) is skipped until it catches up.
REPLICA_MAX_LAG = env.float("IMAGESEARCH_REPLICA_MAX_LAG", 10.0, minimum=0.0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Storage --------------------------------------------------------------
# Local files by default; set IMAGESEARCH_STORAGE_BACKEND=storages.backends.s3.S3Storage
# (plus the AWS_* variables django-storages reads) for S3-compatible storage.
MEDIA_ROOT = env.path("IMAGESEARCH_MEDIA_ROOT", DATA_DIR / "media")
MEDIA_URL = env.str("IMAGESEARCH_MEDIA_URL", "/media/")
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": env.str("IMAGESEARCH_STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage")},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# S3-compatible storage: django-storages reads these from the settings, not the environment, so
# they are parsed here (credentials it reads from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY itself).
AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", "") or None
AWS_S3_ENDPOINT_URL = env.str("AWS_S3_ENDPOINT_URL", "") or None  # e.g. http://minio:9000; empty: AWS
AWS_S3_REGION_NAME = env.str("AWS_S3_REGION_NAME", "") or None
AWS_S3_ADDRESSING_STYLE = env.choice("AWS_S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual"))
AWS_S3_CUSTOM_DOMAIN = env.str("AWS_S3_CUSTOM_DOMAIN", "") or None
# Pages and the API link to signed URLs (private bucket) valid this long; false: plain URLs (public bucket).
AWS_QUERYSTRING_AUTH = env.bool("AWS_QUERYSTRING_AUTH", True)
AWS_QUERYSTRING_EXPIRE = env.int("AWS_QUERYSTRING_EXPIRE", 3600, minimum=60)
AWS_S3_SIGNATURE_VERSION = "s3v4"  # botocore may otherwise sign URLs with the retired SigV2
# Serve MEDIA_URL from Django itself (fine for a self-hosted single box; put a
# web server or a bucket in front for heavy traffic).
SERVE_MEDIA = env.bool("IMAGESEARCH_SERVE_MEDIA", True)
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# First: refuses an upload once a file passes IMAGESEARCH_MAX_UPLOAD_BYTES, while it is received.
FILE_UPLOAD_HANDLERS = ["catalog.uploads.LimitedUploadHandler",
                        "django.core.files.uploadhandler.MemoryFileUploadHandler",
                        "django.core.files.uploadhandler.TemporaryFileUploadHandler"]
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("IMAGESEARCH_MAX_REQUEST_BYTES", 60 * 1024 * 1024, minimum=1024)

# --- CLIP embedder ----------------------------------------------------------
CLIP_MODEL = env.str("CLIP_MODEL", "xlm-roberta-base-ViT-B-32")
CLIP_PRETRAINED = env.str("CLIP_PRETRAINED", "laion5b_s13b_b90k")
CLIP_WEIGHTS_FILE = env.path("CLIP_WEIGHTS_FILE", None)
CLIP_DEVICE = env.choice("CLIP_DEVICE", "cpu", ("cpu", "cuda", "auto"))
# Image tower runtime. Default torch until a quiet bench shows ONNX Runtime faster (bench/model_runtime.py);
# onnx exports the tower once into DATA_DIR/models (torch if that fails); auto = onnx on CPU, torch on CUDA.
CLIP_RUNTIME = env.choice("CLIP_RUNTIME", "torch", ("auto", "torch", "onnx"))
CLIP_BATCH_SIZE = env.int("CLIP_BATCH_SIZE", 32, minimum=1, maximum=4096)
# Random weights: for tests only. The embedder logs a loud warning when on.
CLIP_RANDOM_INIT = env.bool("CLIP_RANDOM_INIT", False)
# While a space is being built, searching processes load its model in the background (catalog/spaces.py).
WARM_BUILDING_MODEL = env.bool("IMAGESEARCH_WARM_BUILDING_MODEL", True)
if CLIP_RANDOM_INIT and CLIP_WEIGHTS_FILE:
    raise ImproperlyConfigured("CLIP_RANDOM_INIT and CLIP_WEIGHTS_FILE are mutually exclusive.")

# --- Ingestion --------------------------------------------------------------
IMAGE_MAX_PIXELS = env.int("IMAGESEARCH_MAX_PIXELS", 100_000_000, minimum=1)
# Longest side / shortest side. Phone panoramas reach ~8:1, banners and receipts ~15:1; beyond
# 20:1 the model's centre square shows under 5% of the picture, so its vector says little.
IMAGE_MAX_ASPECT_RATIO = env.float("IMAGESEARCH_MAX_ASPECT_RATIO", 20.0, minimum=1.0)
# Query pictures (uploads, and regions of stored pictures) are decoded in the web process: a query needs
# ~224 px, so what an upload decodes (after JPEG's reduced-scale decoding) gets a lower cap, ~4 bytes
# a pixel (260 MB at 64 Mpx), and at most QUERY_DECODES run at once in a process.
QUERY_MAX_PIXELS = env.int("IMAGESEARCH_QUERY_MAX_PIXELS", 64_000_000, minimum=1)
QUERY_DECODES = env.int("IMAGESEARCH_QUERY_DECODES", 2, minimum=1, maximum=64)
THUMBNAIL_MAX_SIDE = env.int("IMAGESEARCH_THUMBNAIL_SIZE", 320, minimum=16, maximum=2048)
# Database connections a filtered search walks its value graphs on side by side (PostgreSQL walks an
# HNSW graph on one core); 1: one after the other; 0: min(4, the cores this process may use).
SEARCH_PARALLEL = env.int("IMAGESEARCH_SEARCH_PARALLEL", 0, minimum=0, maximum=32) or min(4, usable_cores())
# Processes that decode and resize while the model embeds the previous batch; 0: sized to the
# machine (catalog.ingest.decoding.default_workers).
INGEST_DECODE_WORKERS = env.int("IMAGESEARCH_DECODE_WORKERS", 0, minimum=0, maximum=256)
# JPEGs decoded on the GPU (nvJPEG) where the model runs on CUDA. Off: on an H200 with 16 cores the
# decode processes imported twice as fast (bench/README.md).
INGEST_GPU_JPEG_DECODE = env.bool("IMAGESEARCH_GPU_JPEG_DECODE", False)
# Database connections an import stores batches on side by side (catalog/ingest/lanes.py).
INGEST_STORE_CONNECTIONS = env.int("IMAGESEARCH_STORE_CONNECTIONS", 1, minimum=1, maximum=64)
# Seconds one image may take to decode before it fails (a hostile file can loop a decoder).
INGEST_DECODE_TIMEOUT = env.int("IMAGESEARCH_DECODE_TIMEOUT", 120, minimum=1, maximum=3600)
# Videos (catalog/ingest/video.py): key frames by scene change, at least MIN_GAP and at most
# MAX_GAP seconds apart; every cap is checked on the container's header before any decoding.
VIDEO_MIN_GAP = env.float("IMAGESEARCH_VIDEO_MIN_GAP", 1.0, minimum=0.0)
VIDEO_MAX_GAP = env.float("IMAGESEARCH_VIDEO_MAX_GAP", 30.0, minimum=0.1)
if VIDEO_MAX_GAP < VIDEO_MIN_GAP:
    raise ImproperlyConfigured("IMAGESEARCH_VIDEO_MAX_GAP must not be less than IMAGESEARCH_VIDEO_MIN_GAP.")
VIDEO_SAMPLE_INTERVAL = env.float("IMAGESEARCH_VIDEO_SAMPLE_INTERVAL", 0.5, minimum=0.01)
VIDEO_MAX_DURATION = env.int("IMAGESEARCH_VIDEO_MAX_DURATION", 3600, minimum=1)
VIDEO_MAX_FRAMES = env.int("IMAGESEARCH_VIDEO_MAX_FRAMES", 200, minimum=1, maximum=10_000)
VIDEO_MAX_PIXELS = env.int("IMAGESEARCH_VIDEO_MAX_PIXELS", 3840 * 2160, minimum=1)
VIDEO_MAX_STREAMS = env.int("IMAGESEARCH_VIDEO_MAX_STREAMS", 16, minimum=1, maximum=1000)
# Seconds one video may take to extract (it replaces IMAGESEARCH_DECODE_TIMEOUT for videos).
VIDEO_TIMEOUT = env.int("IMAGESEARCH_VIDEO_TIMEOUT", 900, minimum=1, maximum=86_400)
# Import jobs (uploads, URLs, archives) run in the background worker (manage.py db_worker).
IMPORT_MAX_UPLOAD_BYTES = env.int("IMAGESEARCH_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1)
IMPORT_MAX_URLS = env.int("IMAGESEARCH_IMPORT_MAX_URLS", 1000, minimum=1)
# A worker renews its claims on a job's items every third of this; items whose worker died are
# taken over by the next worker once the lease has run out.
IMPORT_LEASE_SECONDS = env.int("IMAGESEARCH_IMPORT_LEASE_SECONDS", 60, minimum=2)
# Items a worker claims at a time; any number of workers share one job this way.
IMPORT_CHUNK_SIZE = env.int("IMAGESEARCH_IMPORT_CHUNK_SIZE", 64, minimum=1, maximum=10_000)
IMPORT_MAX_ATTEMPTS = env.int("IMAGESEARCH_IMPORT_MAX_ATTEMPTS", 5, minimum=1)
# A job task works this long, then queues its continuation: a worker told to stop, and
# other imports, never wait longer than this for a big import.
IMPORT_SLICE_SECONDS = env.int("IMAGESEARCH_IMPORT_SLICE_SECONDS", 60, minimum=0)
# Manifests (catalog/ingest/manifests.py): read row by row, each line, row count and row's attributes capped.
MANIFEST_MAX_ROWS = env.int("IMAGESEARCH_MANIFEST_MAX_ROWS", 100_000, minimum=1)
MANIFEST_MAX_LINE_BYTES = env.int("IMAGESEARCH_MANIFEST_MAX_LINE_BYTES", 64 * 1024, minimum=256)
MANIFEST_MAX_ATTRIBUTES_BYTES = env.int("IMAGESEARCH_MANIFEST_MAX_ATTRIBUTES_BYTES", 4096, minimum=2)
ARCHIVE_MAX_MEMBERS = env.int("IMAGESEARCH_ARCHIVE_MAX_MEMBERS", 10_000, minimum=1)
ARCHIVE_MAX_TOTAL_BYTES = env.int("IMAGESEARCH_ARCHIVE_MAX_TOTAL_BYTES", 2 * 1024**3, minimum=1)
ARCHIVE_MAX_MEMBER_BYTES = env.int("IMAGESEARCH_ARCHIVE_MAX_MEMBER_BYTES", 100 * 1024**2, minimum=1)
# Remote URLs: hosts listed here skip the private-address (SSRF) check; for tests only.
FETCH_ALLOWED_HOSTS = env.list("IMAGESEARCH_FETCH_ALLOWED_HOSTS", [])
FETCH_TIMEOUT = env.float("IMAGESEARCH_FETCH_TIMEOUT", 10.0, minimum=0.1)
FETCH_TOTAL_TIMEOUT = env.float("IMAGESEARCH_FETCH_TOTAL_TIMEOUT", 120.0, minimum=0.1)
FETCH_MAX_BYTES = env.int("IMAGESEARCH_FETCH_MAX_BYTES", 50 * 1024**2, minimum=1)
FETCH_MAX_REDIRECTS = env.int("IMAGESEARCH_FETCH_MAX_REDIRECTS", 5, minimum=0)

# --- Background tasks -------------------------------------------------------
TASKS = {
    "default": {
        "BACKEND": env.str("IMAGESEARCH_TASKS_BACKEND", "django_tasks_db.DatabaseBackend"),
        "QUEUES": ["default"],
    }
}

# --- Accounts, access and security ------------------------------------------------
# Reading (search pages and API, image list/detail/similar, media files) is open to anyone only
# when this is on; otherwise it needs a login (session or API token). Writing always needs a
# login with the matching Django permission (catalog.accounts.access).
PUBLIC_READ = env.bool("IMAGESEARCH_PUBLIC_READ", False)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
# django-axes first: it refuses locked-out username+IP pairs before the password is checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("IMAGESEARCH_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("IMAGESEARCH_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "catalog.accounts.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "catalog.accounts.throttling.client_ip"
AXES_VERBOSE = False
# Reverse proxies in front of the service: the client address is taken from X-Forwarded-For,
# this many entries from the right; 0 = use the connection's address (X-Forwarded-For ignored).
PROXY_COUNT = env.int("IMAGESEARCH_PROXY_COUNT", 0, minimum=0, maximum=10)

# API tokens (django-rest-knox): stored hashed, shown once; "Authorization: Bearer <token>".
TOKEN_TTL_DAYS = env.int("IMAGESEARCH_TOKEN_TTL_DAYS", 30, minimum=0)  # 0: tokens never expire
REST_KNOX = {
    "AUTH_HEADER_PREFIX": "Bearer",
    "TOKEN_TTL": timedelta(days=TOKEN_TTL_DAYS) if TOKEN_TTL_DAYS else None,
    "AUTO_REFRESH": False,
}

# Throttles count in the database cache, so every web process on every machine shares them
# (the table is created by migration catalog 0005).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},  # small per-process lookups
    "shared": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "imagesearch_cache"},
}
THROTTLE_RATES = {
    "search": env.rate("IMAGESEARCH_THROTTLE_SEARCH", "120/min"),
    "upload": env.rate("IMAGESEARCH_THROTTLE_UPLOAD", "30/min"),
    "login": env.rate("IMAGESEARCH_THROTTLE_LOGIN", "10/min"),
}

# Browser clients on other origins (API only); none by default.
CORS_ALLOWED_ORIGINS = env.list("IMAGESEARCH_CORS_ALLOWED_ORIGINS", [])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_CREDENTIALS = False  # cross-origin clients use bearer tokens, not the session cookie

# Content-Security-Policy: only this site's own scripts (inline ones need the request's nonce).
# Inline styles stay allowed: the admin and Swagger UI use style attributes; styles cannot run code.
def _bucket_sources() -> list[str]:
    """Where S3 storage's links point, so that pages may show them: the custom domain, else the
    endpoint (path-style and virtual-host-style URLs), else AWS's own hosts."""
    if "s3" not in STORAGES["default"]["BACKEND"].lower():
        return []
    if AWS_S3_CUSTOM_DOMAIN:
        return [f"https://{AWS_S3_CUSTOM_DOMAIN}"]
    if AWS_S3_ENDPOINT_URL:
        from urllib.parse import urlsplit

        endpoint = urlsplit(AWS_S3_ENDPOINT_URL)
        return [f"{endpoint.scheme}://{endpoint.netloc}", f"{endpoint.scheme}://*.{endpoint.netloc}"]
    return ["https://*.amazonaws.com"]


_CSP_IMG_SRC = ["'self'", "data:", "blob:", *_bucket_sources(), *env.list("IMAGESEARCH_CSP_IMG_SRC", [])]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'", CSP_NONCE],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": _CSP_IMG_SRC,
        "media-src": _CSP_IMG_SRC,  # videos come from the same storage as pictures
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# One switch for a public deployment behind a TLS-terminating proxy.
PRODUCTION = env.bool("IMAGESEARCH_PRODUCTION", False)
if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("IMAGESEARCH_DEBUG must be off when IMAGESEARCH_PRODUCTION is on.")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    LANGUAGE_COOKIE_SECURE = True  # the language switch's choice
    SECURE_SSL_REDIRECT = env.bool("IMAGESEARCH_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("IMAGESEARCH_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("IMAGESEARCH_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env.bool("IMAGESEARCH_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading commits the domain to HTTPS in browsers for good: the operator's choice, not a default.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

# --- API --------------------------------------------------------------------
REST_FRAMEWORK = {
    # Adds each operation's error responses in the one error shape (catalog/api/schema.py).
    "DEFAULT_SCHEMA_CLASS": "catalog.api.schema.ApiAutoSchema",
    "EXCEPTION_HANDLER": "catalog.api.errors.api_exception_handler",
    # DRF's, bounded like Django's forms (IMAGESEARCH_MAX_REQUEST_BYTES); nested JSON is a 400.
    "DEFAULT_PARSER_CLASSES": ["catalog.api.parsers.JSONParser", "catalog.api.parsers.MultiPartParser",
                               "catalog.api.parsers.FormParser"],
    # Token first: an anonymous request then gets 401 with "WWW-Authenticate: Bearer". knox's class,
    # with unreadable headers (not UTF-8, NUL) refused as 401 instead of failing.
    "DEFAULT_AUTHENTICATION_CLASSES": ["catalog.accounts.authentication.BearerTokenAuthentication",
                                       "rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["catalog.accounts.permissions.CanRead"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "imagesearch API",
    "DESCRIPTION": "Search an image collection by text, by example image and by metadata.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its docs page are read like the rest of the API: login-only unless reading is public.
    "SERVE_PERMISSIONS": ["catalog.accounts.permissions.CanRead"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Two models have a "state": each enum is named after its model.
    "ENUM_NAME_OVERRIDES": {"EmbeddingSpaceStateEnum": "catalog.models.EmbeddingSpace.State",
                            "ImportJobStateEnum": "catalog.models.ImportJob.State"},
}

LANGUAGE_CODE = "en"  # for browsers that ask for neither language
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
LANGUAGE_COOKIE_HTTPONLY = True  # read by the server only
LANGUAGE_COOKIE_SAMESITE = "Lax"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

_LOG_LEVEL = env.choice("IMAGESEARCH_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # Libraries (open_clip logs on the root logger) only speak up for warnings.
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {name: {"level": _LOG_LEVEL} for name in ("catalog", "imagesearch", "django_tasks_db")},
}
