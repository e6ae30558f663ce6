"""Decode functions that misbehave on marked input, for tests. They run in the ingestion's decode
processes, which import them by name: so they live here, free of Django, not in a test module."""

from __future__ import annotations

import os

from catalog.ingest import decoding

MARK = b"<decode-fault>"  # appended after a JPEG's end: decoders ignore it


def _marked(source) -> bool:
    if isinstance(source, (bytes, bytearray)):
        return source.endswith(MARK)
    with open(source, "rb") as fh:
        fh.seek(-len(MARK), os.SEEK_END)
        return fh.read() == MARK


def die_on_mark(source, spec):
    """Kills its process, as the OOM killer or a segfaulting decoder would."""
    if _marked(source):
        os._exit(70)
    return decoding.decode(source, spec)


def memory_error_on_mark(source, spec):
    """Runs out of memory while making the model input."""
    if not _marked(source):
        return decoding.decode(source, spec)
    real = decoding.fit_model_input

    def fit(*args, **kwargs):
        raise MemoryError

    decoding.fit_model_input = fit
    try:
        return decoding.decode(source, spec)
    finally:
        decoding.fit_model_input = real


def hang_on_mark(source, spec):
    """Never finishes, as a decoder stuck in a loop on a hostile file."""
    if _marked(source):
        import time

        time.sleep(3600)
    return decoding.decode(source, spec)
