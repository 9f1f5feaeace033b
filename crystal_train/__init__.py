"""crystal-train: train crystal graph neural networks on Materials Project data."""

__version__ = "0.1.0"
