"""akd: distil any image classifier into an attentive surrogate that explains it in real time.

Heavy or optional dependencies are imported inside the modules that need them, so ``import akd`` stays cheap.
"""

from akd.util import AkdError

__all__ = ["AkdError", "__version__"]
__version__ = "0.1.0"
