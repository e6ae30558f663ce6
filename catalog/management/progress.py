"""A progress bar for long commands; silent when disabled or not on a terminal."""

from contextlib import contextmanager


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def write(self, message: str) -> None:
        self._stream.write(message)

    def __init__(self, stream):
        self._stream = stream


@contextmanager
def progress_bar(*, total: int, enabled: bool, stream):
    if not enabled:
        yield _NoBar(stream)
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="img", file=stream._out if hasattr(stream, "_out") else stream,
              dynamic_ncols=True) as bar:
        yield _TqdmBar(bar, stream)


class _TqdmBar:
    def __init__(self, bar, stream):
        self._bar, self._stream = bar, stream

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def write(self, message: str) -> None:
        self._bar.write(message, file=self._bar.fp)
