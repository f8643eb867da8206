"""capsbench: how capsule networks scale with depth."""

__version__ = "0.1.0"
