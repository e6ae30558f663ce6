"""A progress bar for long commands, and a silent stand-in when it is switched off."""

from contextlib import contextmanager


class _NoBar:
    def __init__(self, stream):
        self._stream = stream

    def update(self, n: int = 1) -> None:
        pass

    def write(self, message: str) -> None:
        self._stream.write(message)


class _TqdmBar:
    def __init__(self, bar):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def write(self, message: str) -> None:
        self._bar.write(message, file=self._bar.fp)  # printed above the bar, not through it


@contextmanager
def progress_bar(*, total: int | None, enabled: bool, stream, unit: str = "img"):
    """``stream`` is a command's ``self.stderr``; lines written through the bar keep it intact."""
    if not enabled:
        yield _NoBar(stream)
        return
    from tqdm import tqdm

    # tqdm redraws with "\r": give it the raw stream, not Django's OutputWrapper (which adds "\n").
    raw = getattr(stream, "_out", stream)
    with tqdm(total=total, unit=unit, file=raw, dynamic_ncols=True) as bar:
        yield _TqdmBar(bar)
