"""Folder listings cached by directory modification times.

``object_info`` (every model combo of every node) and prompt validation (every COMBO value)
both ask "which files are in models/checkpoints?" many times a second on a busy server; a
walk of a large model drive costs milliseconds to seconds.  A listing is kept together with
the ``st_mtime_ns`` of every directory the walk entered: adding, removing or renaming a file
changes its directory's mtime, so checking those stamps (one ``stat`` per directory) tells
whether the listing still holds, without walking again.

Racy stamps: Linux updates directory mtimes from a coarse clock (one scheduler tick, a few
milliseconds), so a file created within the same tick as the walk may leave the stamp
unchanged.  As git does for its index, a listing taken less than :data:`RACY_SECONDS` after
the newest stamp it depends on is not trusted: the next call walks again.

Thread-safe: the web server's threads and the worker share one cache.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

RACY_SECONDS = 0.05


@dataclass(frozen=True)
class Listing:
    names: tuple[str, ...]
    stamps: tuple[tuple[str, int | None], ...]
    """(directory, st_mtime_ns or None when it did not exist) for every directory walked."""
    trusted: bool


def stamp(directory: str) -> int | None:
    try:
        return os.stat(directory).st_mtime_ns
    except OSError:
        return None


class ListingCache:
    """``get(key, roots, walk)``: ``walk()``'s result, reused while no walked directory changed.

    ``walk`` returns ``(names, directories_walked)``; the roots are always part of the stamps
    (so a root that appears later is noticed).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, Listing] = {}
        self.walks = 0

    def get(self, key: Hashable, roots: Sequence[str],
            walk: Callable[[], tuple[Sequence[str], Sequence[str]]]) -> list[str]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.trusted and all(stamp(d) == s for d, s in entry.stamps):
            return list(entry.names)
        started = time.time_ns()
        # Stamps are read before walking: a change during the walk then shows up next time.
        before = {d: stamp(d) for d in roots}
        names, walked = walk()
        stamps = dict(before)
        for d in walked:
            stamps.setdefault(d, stamp(d))
        newest = max((s for s in stamps.values() if s is not None), default=0)
        trusted = started - newest > RACY_SECONDS * 1e9
        listing = Listing(tuple(names), tuple(stamps.items()), trusted)
        with self._lock:
            self._entries[key] = listing
            self.walks += 1
        return list(listing.names)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
