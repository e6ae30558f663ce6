"""Offline reverse geocoding: GPS position -> nearest city name.

Uses the city table that ships inside the ``reverse_geocoder`` package
(GeoNames cities with population > 1000), so no network is needed. The table
is loaded once per process, on first use (about a second).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_geocoder = None


def _load():
    global _geocoder
    with _lock:
        if _geocoder is None:
            import reverse_geocoder

            # mode=1: single process; the default forks a pool, wasteful inside workers.
            _geocoder = reverse_geocoder.RGeocoder(mode=1, verbose=False)
    return _geocoder


def city_at(latitude: float, longitude: float) -> str:
    """Name of the nearest known city, or "" when the position is unusable."""
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return ""
    (match,) = _load().query([(latitude, longitude)])
    return match.get("name", "")
