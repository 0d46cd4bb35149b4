"""medbench: train, compare, tune, ensemble and report deep-learning models on MedMNIST."""

__version__ = "0.1.0"

from medbench.errors import MedbenchError

__all__ = ["MedbenchError", "__version__"]
