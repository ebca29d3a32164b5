"""Import Zeus's `ZeusMonitor` without scikit-learn, which it loads for one function.

    from trainables.training.zeus_import import zeus_monitor_class
    ZeusMonitor = zeus_monitor_class()

`zeus.monitor` imports `sklearn.metrics.auc` at module level; PowerMonitor
calls it only to integrate sampled power on GPUs without an energy counter,
which trials do not measure (`trainables.training.gpus`). Importing scikit-learn (and SciPy behind it) costs every trial process about
70 MiB and a second. During Zeus's import, `sklearn.metrics` resolves to a
stand-in whose `auc` imports the real one on first call, so results are
scikit-learn's own; the stand-in is gone from `sys.modules` right after. An
already imported scikit-learn is used as is, and a Zeus that needs more of it
is imported plainly.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

_STAND_INS = ("sklearn", "sklearn.metrics")
_lock = threading.Lock()


def auc(x, y) -> float:
    """`sklearn.metrics.auc`, imported on first use."""
    from sklearn.metrics import auc as sklearn_auc

    return sklearn_auc(x, y)


def zeus_monitor_class() -> type:
    """`zeus.monitor.ZeusMonitor`, imported without loading scikit-learn."""
    with _lock:
        if "zeus.monitor" not in sys.modules and "sklearn" not in sys.modules:
            package, metrics = ModuleType("sklearn"), ModuleType("sklearn.metrics")
            metrics.auc, package.metrics = auc, metrics
            sys.modules.update(zip(_STAND_INS, (package, metrics)))
            try:
                import zeus.monitor  # noqa: F401 - binds the stand-in `auc` in zeus.monitor.power
            except ImportError:  # a Zeus that needs more of scikit-learn: import it plainly below
                for name in [n for n in sys.modules if n == "zeus" or n.startswith("zeus.")]:
                    del sys.modules[name]
            finally:
                for name in _STAND_INS:
                    del sys.modules[name]
        from zeus.monitor import ZeusMonitor

    return ZeusMonitor
