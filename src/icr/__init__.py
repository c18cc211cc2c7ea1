"""icr: Implicit Cross-lingual Rewarding for multilingual preference alignment (arXiv 2503.04647)."""

__version__ = "0.1.0"
