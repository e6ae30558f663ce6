"""Strict parsing of environment variables for the settings module.

A value that is set but malformed is a configuration error, never a silent
fallback to the default: `ImproperlyConfigured` names the variable and what
was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_PERIODS = ("s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day")


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None):
        self._environ = os.environ if environ is None else environ

    def _get(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _parse(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        raw = self._get(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError):
            raise ImproperlyConfigured(f"{name}={raw!r} is invalid: expected {expected}.") from None

    def str(self, name: str, default: str | None = None) -> str | None:
        return self._parse(name, default, str, "a string")

    def bool(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(raw)

        return self._parse(name, default, parse, "one of true/false, 1/0, yes/no, on/off")

    def int(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        def parse(raw: str) -> int:
            value = int(raw)
            if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
                raise ValueError(raw)
            return value

        bounds = f" between {minimum} and {maximum}" if maximum is not None else (
            f" >= {minimum}" if minimum is not None else "")
        return self._parse(name, default, parse, f"an integer{bounds}")

    def float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        def parse(raw: str) -> float:
            value = float(raw)
            if value < minimum:
                raise ValueError(raw)
            return value

        return self._parse(name, default, parse, f"a number >= {minimum}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def parse(raw: str) -> str:
            if raw not in choices:
                raise ValueError(raw)
            return raw

        return self._parse(name, default, parse, "one of " + ", ".join(choices))

    def list(self, name: str, default: list[str]) -> list[str]:
        return self._parse(name, default, lambda raw: [p.strip() for p in raw.split(",") if p.strip()],
                           "a comma-separated list")

    def rate(self, name: str, default: str) -> str:
        """A request rate as DRF's throttles read it: ``<count>/<s|sec|min|hour|day>``."""
        def parse(raw: str) -> str:
            count, _, period = raw.partition("/")
            if not count.isdigit() or int(count) < 1 or period not in _PERIODS:
                raise ValueError(raw)
            return raw

        return self._parse(name, default, parse, "a rate like 60/min (periods: " + ", ".join(_PERIODS) + ")")

    def path(self, name: str, default: Path | None) -> Path | None:
        return self._parse(name, default, lambda raw: Path(raw).expanduser().resolve(), "a path")


def parse_database_url(url: str, *, variable: str = "DATABASE_URL") -> dict:
    """Turn ``postgres://user:pass@host:port/name?opt=val`` into a Django DATABASES entry
    (``variable``: where it came from, for the error messages)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(
            f"{variable} must start with postgres:// or postgresql://, got scheme {parts.scheme!r}.")
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured(f"{variable} has no database name (postgres://user@host/NAME).")
    options = dict(parse_qsl(parts.query))
    # A Unix-socket directory may be given as ?host=/path, as libpq allows.
    host = options.pop("host", None) or unquote(parts.hostname or "")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{variable} has an invalid port.") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or ""),
        "OPTIONS": options,
    }
