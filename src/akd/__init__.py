"""akd: distil any image classifier into an attentive surrogate that explains it in real time.

The Python API (``akd.distill``, ``akd.export``, ``akd.calibrate``, ``akd.evaluate``, ``akd.SaliencyEngine``,
``akd.Preprocessing``; see ``akd.api``) is loaded on first use: ``import akd`` stays cheap, and the runtime-only
install (no torch) can import it.
"""

from akd.util import AkdError

__all__ = ["AkdError", "Preprocessing", "SaliencyEngine", "__version__", "calibrate", "distill", "evaluate",
           "export"]
__version__ = "0.1.0"

_LAZY = {"distill": "akd.api", "export": "akd.api", "calibrate": "akd.api", "evaluate": "akd.api",
         "SaliencyEngine": "akd.runtime.engine", "Preprocessing": "akd.data.preprocessing"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'akd' has no attribute '{name}'")
