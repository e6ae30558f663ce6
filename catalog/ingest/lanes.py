"""Storing batches on several database connections at once (IMAGESEARCH_STORE_CONNECTIONS).

With the model on a GPU the store is the slowest stage: pgvector's HNSW insert is ~2.6 ms of one
backend's CPU per vector (bench/README.md), and one connection does one insert at a time. Lanes
are threads, each with its own connection, that take whole batches in turn; a batch is still one
transaction, so every guarantee of ``_store_batch`` holds per batch. With one lane the batch is
stored on the calling thread and its connection, as before (the tests' transactions see it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from django.db import connections


class StoreLanes:
    """Runs ``submit``ted calls on ``count`` threads (inline for one); one more waits, so at
    most ``count + 1`` batches (their pixels and spooled files) are held here.
    The first exception a call raises stops the lanes and is raised by the next ``submit`` or by
    ``close``; calls not started by then are dropped (their items stay unrecorded, like items a
    killed worker never reached)."""

    def __init__(self, count: int):
        self.count = count
        self._error: BaseException | None = None  # stays set: the lanes skip what is left
        self._raised = False
        self._threads: list[threading.Thread] = []
        if count > 1:
            self._queue: queue.Queue = queue.Queue(maxsize=1)
            self._threads = [threading.Thread(target=self._lane, name=f"ingest-store-{n}", daemon=True)
                             for n in range(count)]
            for thread in self._threads:
                thread.start()

    def submit(self, call: Callable, *args) -> None:
        self._raise_if_failed()
        if not self._threads:
            call(*args)
            return
        while True:  # a bounded wait that notices a lane's failure
            try:
                self._queue.put((call, args), timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def close(self) -> None:
        """Wait for every call submitted; raise the first failure."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._raise_if_failed()

    def _lane(self) -> None:
        try:
            while (task := self._queue.get()) is not None:
                if self._error is None:
                    try:
                        task[0](*task[1])
                    except BaseException as error:  # noqa: BLE001 - handed to the submitting thread
                        self._error = self._error or error
        finally:
            connections.close_all()  # this thread's own connections

    def _raise_if_failed(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def __enter__(self) -> "StoreLanes":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:  # already failing: let the lanes finish what they hold, keep the first error
            try:
                self.close()
            except BaseException:  # noqa: BLE001
                pass
