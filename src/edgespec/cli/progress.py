"""Progress bars for the commands that run long: on a terminal only.

`disable=None` is tqdm's "draw only when the stream is a terminal": a command whose stderr goes to
a log file or a pipe writes no carriage-return frames into it, while a person at a terminal sees
how far the work has come. Every long command draws its bar through here.
"""

from __future__ import annotations

from typing import Any, Iterable


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr that stays silent when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None, leave=False)
