"""Settings for imagesearch. Every knob comes from an environment variable,
parsed strictly (see imagesearch/env.py and the table in README.md)."""

from pathlib import Path
import secrets

from django.core.exceptions import ImproperlyConfigured

from imagesearch.env import Env, parse_database_url

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
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_tasks",
    "django_tasks_db",
    "catalog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "imagesearch.urls"
WSGI_APPLICATION = "imagesearch.wsgi.application"

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
    DATABASES = {
        "default": {
            "ENGINE": "imagesearch.embedded_db",
            "NAME": "imagesearch",
            "OPTIONS": {
                "pgdata": str(DATA_DIR / "pgdata"),
                # The HNSW index and the vectors must fit in memory for fast searches
                # (bench/search_db.py: 100k vectors, 128MB -> 1GB took unfiltered p50 16.6 -> 10.5 ms).
                "server_settings": {
                    "shared_buffers": env.str("IMAGESEARCH_EMBEDDED_SHARED_BUFFERS", "1GB"),
                    "maintenance_work_mem": "512MB",  # HNSW index builds
                    "effective_cache_size": "4GB",
                    "random_page_cost": "1.1",
                    "jit": "off",
                },
            },
        }
    }
DATABASES["default"]["CONN_MAX_AGE"] = env.int("IMAGESEARCH_DB_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
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
# Serve MEDIA_URL from Django itself (fine for a self-hosted single box; put a
# web server or a bucket in front for heavy traffic).
SERVE_MEDIA = env.bool("IMAGESEARCH_SERVE_MEDIA", True)
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("IMAGESEARCH_MAX_REQUEST_BYTES", 60 * 1024 * 1024, minimum=1024)

# --- CLIP embedder ----------------------------------------------------------
CLIP_MODEL = env.str("CLIP_MODEL", "xlm-roberta-base-ViT-B-32")
CLIP_PRETRAINED = env.str("CLIP_PRETRAINED", "laion5b_s13b_b90k")
CLIP_WEIGHTS_FILE = env.path("CLIP_WEIGHTS_FILE", None)
CLIP_DEVICE = env.choice("CLIP_DEVICE", "cpu", ("cpu", "cuda", "auto"))
CLIP_BATCH_SIZE = env.int("CLIP_BATCH_SIZE", 32, minimum=1, maximum=4096)
# Random weights: for tests only. The embedder logs a loud warning when on.
CLIP_RANDOM_INIT = env.bool("CLIP_RANDOM_INIT", False)
if CLIP_RANDOM_INIT and CLIP_WEIGHTS_FILE:
    raise ImproperlyConfigured("CLIP_RANDOM_INIT and CLIP_WEIGHTS_FILE are mutually exclusive.")

# --- Ingestion --------------------------------------------------------------
IMAGE_MAX_PIXELS = env.int("IMAGESEARCH_MAX_PIXELS", 100_000_000, minimum=1)
THUMBNAIL_MAX_SIDE = env.int("IMAGESEARCH_THUMBNAIL_SIZE", 320, minimum=16, maximum=2048)
# Threads that read, decode and resize while the model embeds the previous batch.
INGEST_DECODE_WORKERS = env.int("IMAGESEARCH_DECODE_WORKERS", 2, minimum=1, maximum=64)
# Import jobs (uploads, URLs, archives) run in the background worker (manage.py db_worker).
IMPORT_MAX_UPLOAD_BYTES = env.int("IMAGESEARCH_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1)
IMPORT_MAX_URLS = env.int("IMAGESEARCH_IMPORT_MAX_URLS", 1000, minimum=1)
# A worker renews its claim on a job every third of this; a job whose worker died is
# taken over by the next worker once the lease has run out.
IMPORT_LEASE_SECONDS = env.int("IMAGESEARCH_IMPORT_LEASE_SECONDS", 60, minimum=2)
IMPORT_MAX_ATTEMPTS = env.int("IMAGESEARCH_IMPORT_MAX_ATTEMPTS", 5, minimum=1)
# A job task works this long, then queues its continuation: a worker told to stop, and
# other imports, never wait longer than this for a big import.
IMPORT_SLICE_SECONDS = env.int("IMAGESEARCH_IMPORT_SLICE_SECONDS", 60, minimum=0)
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

# --- API --------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "catalog.api.errors.api_exception_handler",
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "imagesearch API",
    "DESCRIPTION": "Search an image collection by text, by example image and by metadata.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LANGUAGE_CODE = "en-us"
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
