"""Test configuration: the project's settings module with test defaults in the
environment. Tests use a small open_clip architecture with a bundled
tokenizer and random weights (real code path, no download), and their own
data folder so they never touch a user's collection."""

import os
from pathlib import Path

os.environ.setdefault("CLIP_MODEL", "ViT-S-32")
os.environ.setdefault("CLIP_RANDOM_INIT", "true")
os.environ.setdefault("CLIP_BATCH_SIZE", "8")
os.environ.setdefault("IMAGESEARCH_DATA_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test"))
os.environ.setdefault("IMAGESEARCH_LOG_LEVEL", "WARNING")
# Live-server threads must not keep connections open past the test database teardown.
os.environ.setdefault("IMAGESEARCH_DB_CONN_MAX_AGE", "0")
# Most tests exercise features, not access: reading is public and throttles are out of reach.
# tests/test_access.py and tests/test_throttling.py switch these back to check them.
os.environ.setdefault("IMAGESEARCH_PUBLIC_READ", "true")
for _scope in ("SEARCH", "UPLOAD", "LOGIN"):
    os.environ.setdefault(f"IMAGESEARCH_THROTTLE_{_scope}", "100000/min")

from imagesearch.settings import *  # noqa: E402,F401,F403

# Static files straight from the app folders, without collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# Media on the local disk whatever the environment says: tests talk to loopback only
# (tests/test_s3.py points the storage at an S3 API server it starts on 127.0.0.1).
STORAGES = {**STORAGES, "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}  # noqa: F405
AWS_S3_ENDPOINT_URL = AWS_STORAGE_BUCKET_NAME = None
# Password hashing is not what the tests check, and PBKDF2's 1,000,000 rounds cost about half a second
# per user made or password login (hundreds in the suite). Production keeps Django's default.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
