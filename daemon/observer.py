"""Noticing files in the export folder: watchdog events and the reconcile scan.

Two sources report candidate paths, both as paths *relative to the watch root*:

- :class:`FolderObserver` wraps a watchdog observer (inotify by default, polling for
  SMB/NFS shares where inotify sees nothing) and turns its events into
  :class:`Sighting` values on a queue; new case folders are watched recursively and
  also scanned, because files can land in a folder before its watch exists.
- :func:`scan_folder` walks the tree (never following symbolic links) and yields every
  candidate that is there now. It runs at start-up and every ``rescan_seconds``,
  because watchdog drops inotify queue overflows silently.

:class:`PathFilter` decides what is a candidate: an image name (``image_globs``) that
is not a temporary name (``ignore_globs``, applied to every path component, so a
file under ``.sync/`` is ignored too). Directories are never candidates, even when
named ``x.tif``; FIFOs, sockets and devices are never candidates. Symbolic links are
reported (lstat), so that the worker can refuse one that resolves outside the root
with a visible reason rather than dropping it silently.

Nothing here opens a file: listing and ``lstat`` only. Nothing here logs a path.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import queue
import stat as stat_module
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

__all__ = ["FolderObserver", "PathFilter", "Sighting", "SightingKind", "scan_folder"]

logger = logging.getLogger(__name__)

#: changed: created or written; closed: closed after writing; moved_in: renamed or
#: moved into the folder under a candidate name; deleted: gone or moved away;
#: folder: a directory appeared (scan it); scan: found by a reconcile scan.
SightingKind = Literal["changed", "closed", "moved_in", "deleted", "folder", "scan"]


@dataclass(frozen=True, slots=True)
class Sighting:
    """One report about one path, relative to the watch root (POSIX separators)."""

    kind: SightingKind
    rel_path: str


class PathFilter:
    """Which relative paths are candidate images.

    ``ignore_globs`` are matched against every component of the path (temporary
    names, dotfiles, hidden folders); ``image_globs`` against the file name, both
    case-insensitively.
    """

    def __init__(self, image_globs: Iterable[str], ignore_globs: Iterable[str]) -> None:
        self.update(image_globs, ignore_globs)

    def update(self, image_globs: Iterable[str], ignore_globs: Iterable[str]) -> None:
        """Replace the globs (SIGHUP); the observer thread sees the new ones at once."""
        self.image_globs = tuple(g.lower() for g in image_globs)
        self.ignore_globs = tuple(g.lower() for g in ignore_globs)

    def ignored_component(self, name: str) -> bool:
        """True when one path component (file or folder name) is a temporary name."""
        low = name.lower()
        return any(fnmatch.fnmatchcase(low, g) for g in self.ignore_globs)

    def is_candidate(self, rel_path: str) -> bool:
        """True when ``rel_path`` names an image that is not (inside) a temporary name."""
        parts = [p for p in rel_path.split("/") if p]
        if not parts or any(p == ".." for p in parts):
            return False
        if any(self.ignored_component(p) for p in parts):
            return False
        low = parts[-1].lower()
        return any(fnmatch.fnmatchcase(low, g) for g in self.image_globs)

    def folder_wanted(self, rel_path: str) -> bool:
        """True when a folder should be descended into (not a hidden/temporary one)."""
        parts = [p for p in rel_path.split("/") if p]
        return not any(self.ignored_component(p) for p in parts)


def is_candidate_inode(st: os.stat_result) -> bool:
    """A regular file or a symbolic link (judged later); never a dir, FIFO or device."""
    return stat_module.S_ISREG(st.st_mode) or stat_module.S_ISLNK(st.st_mode)


def scan_folder(
    root: str | os.PathLike[str],
    path_filter: PathFilter,
    *,
    under: str = "",
    listdir: Callable[[str], Iterator[os.DirEntry[str]]] = os.scandir,
) -> Iterator[str]:
    """Yield the relative path of every candidate under ``root`` (or ``root/under``).

    Symbolic links to folders are not descended into; symbolic links named like
    images are yielded (the worker refuses those that leave the root). Folders that
    vanish or cannot be listed while scanning are skipped with a warning that names
    no path.
    """
    base = os.fspath(root)
    stack = [under.strip("/")]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(base, rel_dir) if rel_dir else base
        try:
            entries = list(listdir(abs_dir))
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("reconcile scan: a folder could not be listed (%s)", exc.strerror)
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if path_filter.folder_wanted(rel):
                        stack.append(rel)
                    continue
                if not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    continue
            except OSError:
                continue
            if path_filter.is_candidate(rel):
                yield rel


class _Handler(FileSystemEventHandler):
    """Translate watchdog events into :class:`Sighting` values on a queue."""

    def __init__(self, root: str, path_filter: PathFilter, sink: queue.Queue[Sighting]) -> None:
        self._root = root
        self._filter = path_filter
        self._sink = sink

    def _rel(self, path: bytes | str) -> str | None:
        text = os.fsdecode(path)
        if not text:  # the missing side of an unmatched move (from or to outside)
            return None
        try:
            rel = os.path.relpath(text, self._root)
        except ValueError:
            return None
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            return None
        return rel.replace(os.sep, "/")

    def _put(self, kind: SightingKind, path: bytes | str) -> None:
        rel = self._rel(path)
        if rel is None:
            return
        if kind == "folder":
            if self._filter.folder_wanted(rel):
                self._sink.put(Sighting(kind, rel))
        elif self._filter.is_candidate(rel):
            self._sink.put(Sighting(kind, rel))

    def dispatch(self, event: FileSystemEvent) -> None:  # one place, no per-type methods
        if isinstance(event, DirCreatedEvent):
            self._put("folder", event.src_path)
        elif isinstance(event, DirMovedEvent):
            self._put("folder", event.dest_path)
        elif isinstance(event, FileMovedEvent):
            self._put("deleted", event.src_path)
            self._put("moved_in", event.dest_path)
        elif isinstance(event, FileClosedEvent):
            self._put("closed", event.src_path)
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            self._put("changed", event.src_path)
        elif isinstance(event, FileDeletedEvent):
            self._put("deleted", event.src_path)


def _native_observer() -> BaseObserver:
    """inotify reporting unmatched moves as moves, else the platform's observer.

    A file renamed into the folder from outside it (the scanner's staging folder) is an
    ``IN_MOVED_TO`` without its ``IN_MOVED_FROM``; the default emitter reports that as a
    *creation*, which says nothing about the writer being done. With full events it is a
    move (from nowhere), so it is a ``moved_in`` sighting and ready by format at once.
    """
    try:
        from watchdog.observers.inotify import InotifyObserver

        return InotifyObserver(generate_full_events=True)
    except (ImportError, OSError):  # not Linux, or inotify unavailable
        return Observer()


class FolderObserver:
    """Watch ``root`` recursively and put :class:`Sighting` values on ``sink``.

    ``kind`` is ``"inotify"`` (watchdog's native observer) or ``"polling"``
    (:class:`~watchdog.observers.polling.PollingObserverVFS` with ``lstat``, so no
    symbolic link is followed; ``stat``/``listdir`` are injectable for tests).
    ``kind="none"`` watches nothing: the reconcile scan alone finds files (used to
    test that it does). Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        path_filter: PathFilter,
        sink: queue.Queue[Sighting],
        *,
        kind: Literal["inotify", "polling", "none"] = "inotify",
        poll_interval_seconds: float = 1.0,
        stat: Callable[[str], os.stat_result] = os.lstat,
        listdir: Callable[[str], Iterator[os.DirEntry[str]]] = os.scandir,
    ) -> None:
        self.root = os.fspath(Path(root))
        self.kind = kind
        self._handler = _Handler(self.root, path_filter, sink)
        self._observer: BaseObserver | None
        if kind == "inotify":
            self._observer = _native_observer()
        elif kind == "polling":
            self._observer = PollingObserverVFS(
                stat, listdir, polling_interval=poll_interval_seconds
            )
        else:
            self._observer = None

    def start(self) -> None:
        if self._observer is None:
            return
        self._observer.schedule(self._handler, self.root, recursive=True)
        self._observer.start()
        logger.info("observer started (%s)", self.kind)

    def stop(self) -> None:
        if self._observer is None or not self._observer.is_alive():
            return
        self._observer.stop()
        self._observer.join(timeout=10)
        logger.info("observer stopped")

    def is_alive(self) -> bool:
        return self._observer is None or self._observer.is_alive()

    def __enter__(self) -> FolderObserver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
