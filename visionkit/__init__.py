"""visionkit: a PyTorch computer-vision toolkit."""

from . import contrib

__version__ = "0.1.0"

__all__ = ["__version__", "contrib"]
