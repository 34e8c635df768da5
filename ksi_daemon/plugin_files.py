"""Plugins kept as files in the configured plugin directories (`daemon.plugin_dirs`).

What counts as a plugin there (a `.py` file or a package, not `_private` or `.hidden`), whether
a directory may be trusted, how one is imported, and what its files look like on disk (the
watch mode compares that). The plugin manager loads these at start; the reloader imports them
again, each time under a fresh module name, so the old module (and the requests still running
in it) is left as it was.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import os
import stat
import sys
from pathlib import Path
from typing import Callable, Iterator

import structlog

log = structlog.get_logger("ksi.plugins")
_generation = itertools.count(2)  # the first import of a file is generation 1


def why_untrusted(directory: Path) -> str | None:
    """Why code in `directory` may not be trusted (None: it may): another user could change it."""
    info = directory.stat()
    if info.st_uid not in (os.getuid(), 0):
        return (f"refused: {directory} is owned by uid {info.st_uid}, not by the daemon's user "
                "or root, so another user could put code there")
    if info.st_mode & stat.S_IWOTH:
        return (f"refused: {directory} is world-writable (mode {stat.S_IMODE(info.st_mode):o}), "
                "so anyone could put code there")
    return None


def trusted_dirs(plugin_dirs: list[str], builtin_dir: Path,
                 refused: Callable[[Path, str], None] | None = None) -> Iterator[Path]:
    """The plugin directories to load from: existing ones, not the built-ins' own (loaded as
    built-ins), not untrusted ones (`refused(path, reason)` is told of those)."""
    for directory in plugin_dirs:
        path = Path(directory).expanduser()
        if not path.is_dir():
            log.warning("plugin_dir_missing", path=str(path))
            continue
        if path.resolve() == builtin_dir:  # as the deployment guide lists it
            log.info("plugin_dir_is_builtin", path=str(path),
                     detail="the built-in plugins are loaded once, as built-ins")
            continue
        problem = why_untrusted(path)
        if problem is not None:  # seeds/001: "only load plugins from trusted directories"
            log.error("plugin_dir_refused", path=str(path), reason=problem)
            if refused is not None:
                refused(path, problem)
            continue
        yield path


def plugin_entries(directory: Path) -> list[Path]:
    """The plugins of one directory: `.py` files and packages, by name."""
    return [entry for entry in sorted(directory.iterdir())
            if not entry.name.startswith(("_", "."))
            and (entry.suffix == ".py" or (entry / "__init__.py").is_file())]


def source_of(entry: Path) -> str:
    """The `source` a plugin record shows for a file or package of a plugin directory."""
    return f"dir:{entry}"


def entry_of(source: str) -> Path | None:
    """The file or package behind a record's `source`; None for other plugins."""
    return Path(source[4:]) if source.startswith("dir:") else None


def fingerprint(entry: Path) -> tuple:
    """What the watch mode compares: each file's path, mtime and size (a package's `.py` files
    and anything else in it but caches)."""
    files = [entry] if entry.is_file() else sorted(
        p for p in entry.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    marks = []
    for path in files:
        try:
            info = path.stat()
        except OSError:  # removed while we looked: the next poll sees the change
            continue
        marks.append((str(path), info.st_mtime_ns, info.st_size))
    return tuple(marks)


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the file as it is now, never from `__pycache__`: a cached copy is trusted by
    the source's mtime in whole seconds and its size, so an edit within the second that keeps
    the size (the watch mode sees it by nanoseconds) would reload the old code."""

    def get_code(self, fullname):
        return self.source_to_code(self.get_data(self.path), self.path)


def import_file(entry: Path, fresh: bool = False):
    """Import a plugin file or package as module `ksi_plugin_<name>`; `fresh`: under a new name
    (`ksi_plugin_<name>__<n>`) so the module already loaded stays untouched."""
    package = entry.is_dir()
    module_name = f"ksi_plugin_{entry.stem}" + (f"__{next(_generation)}" if fresh else "")
    path = entry / "__init__.py" if package else entry
    spec = importlib.util.spec_from_file_location(
        module_name, path, loader=_SourceLoader(module_name, str(path)),
        submodule_search_locations=[str(entry)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
