"""lossbench: benchmark similarity-aware classification losses against cross-entropy."""

__version__ = "0.1.0"
