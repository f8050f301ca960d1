"""Numba's on-disk cache of kernels that compile in kernels of other files, kept in step
with those files.

Numba keys a cached kernel by a stamp of its own source file only (numba 0.68: the sha256
of the file's bytes; older numba: its modification time and size). The search's kernels
(planner/search/mcmc_kernel.py, and the tests' random walks) compile in code of
planner/search/fast_evaluator.py: its inlined pieces and the functions they call. After
that file changes, their cached machine code would still be loaded: a search priced by the
old evaluator, or a crash where the layout of the work arrays moved (seen on 2026-12-01: a
segfault in tests/search/test_fast_async.py after a field was added to the Scratch, and
MCMC runs priced by the evaluator before a change, both until the cache files were
deleted).

`depends_on(dependent, *dependencies)` (call it in the dependent module before its first
decorated kernel: numba finds a kernel's cache locator when the decorator runs) makes the
stamp of the dependent file's kernels the sha256 of its own bytes and its dependencies'
bytes, by putting a locator in front of numba's list (numba.core.caching.CacheImpl
._locator_classes) that wraps the locator numba would have chosen and changes only the
stamp. Where this numba has no such list, nothing changes.
"""

from __future__ import annotations

import hashlib
import os

from numba.core import caching

# dependent source file (absolute, normalised) -> the files its kernels compile in
_DEPENDENCIES: dict[str, tuple[str, ...]] = {}


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def _files_digest(paths: tuple[str, ...]) -> bytes:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as source:
            digest.update(source.read())
    return digest.digest()


class DependentSourceLocator(caching._CacheLocator):
    """Numba's own locator for a registered dependent file, with the stamp of the file and
    its dependencies (module docstring); None (numba goes on) for any other file."""

    def __init__(self, inner, files: tuple[str, ...]):
        self._inner = inner
        self._files = files

    @classmethod
    def from_function(cls, py_func, py_file):
        dependencies = _DEPENDENCIES.get(_key(py_file))
        if dependencies is None:
            return None
        for locator_class in _impl_class()._locator_classes:
            if locator_class is cls:
                continue
            inner = locator_class.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner, (py_file,) + dependencies)
        return None

    def ensure_cache_path(self):
        return self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        return _files_digest(self._files)


def _impl_class():
    return getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)


def depends_on(dependent: str, *dependencies: str) -> None:
    """Stamp the cached kernels of `dependent` with `dependencies` too (module docstring)."""
    impl = _impl_class()
    if impl is None or not hasattr(impl, "_locator_classes"):
        return
    _DEPENDENCIES[_key(dependent)] = tuple(dependencies)
    if DependentSourceLocator not in impl._locator_classes:
        impl._locator_classes = [DependentSourceLocator] + list(impl._locator_classes)
