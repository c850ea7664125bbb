"""Hyperdrive: git-push deployment to LXC ships behind nginx, driven by events."""

__version__ = "0.1.0"
