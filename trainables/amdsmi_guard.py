"""Make `import amdsmi` fail with ImportError, not KeyError, where AMD's library is absent.

Zeus depends on the PyPI package `amdsmi`. On a machine without AMD's native
library (`libamd_smi.so`), importing it prints two lines and then raises
KeyError. Ray probes `amdsmi` when it is imported and only catches ImportError,
so `import ray` crashes -- in the driver and in every Ray worker process.

The fix lives at the root: the installed file `instrument_sweep_amdsmi_guard.pth`
calls `install()` at every interpreter start in this environment, so drivers
and workers alike get the guard with no manual step. The guard wraps only the
loading of the top-level `amdsmi` module:

- the real module still runs unchanged, so AMD machines keep working;
- if it raises KeyError (the missing-library failure), the import raises
  ImportError instead and the library's "cannot open" lines are not printed;
- any other outcome (success, other exceptions) is exactly as without the guard.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import sys
from types import ModuleType

GUARDED_MODULE = "amdsmi"


class AmdsmiUnavailableError(ImportError):
    """Raised by `import amdsmi` when AMD's native library cannot be loaded."""


class _GuardedLoader(importlib.abc.Loader):
    """Runs the real loader; turns the missing-library KeyError into ImportError."""

    def __init__(self, real_loader: importlib.abc.Loader) -> None:
        self._real_loader = real_loader

    def __getattr__(self, name: str):
        # get_data, get_resource_reader, is_package, ...: as the real loader.
        return getattr(self._real_loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._real_loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                self._real_loader.exec_module(module)
        except KeyError as exc:
            for name in [n for n in sys.modules if n.startswith(GUARDED_MODULE + ".")]:
                del sys.modules[name]
            raise AmdsmiUnavailableError(
                f"amdsmi is installed but AMD's library could not be loaded ({exc}); "
                "AMD GPU support is disabled on this machine",
                name=GUARDED_MODULE,
            ) from exc
        sys.stdout.write(printed.getvalue())


class AmdsmiGuardFinder(importlib.abc.MetaPathFinder):
    """Meta path finder that wraps the loader of the top-level `amdsmi` module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != GUARDED_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, AmdsmiGuardFinder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _GuardedLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the guard first on sys.meta_path (idempotent)."""
    if not any(isinstance(f, AmdsmiGuardFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AmdsmiGuardFinder())

