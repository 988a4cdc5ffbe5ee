"""drainer: keep an Azure VM out of its load balancer while the platform maintains it."""

__version__ = "0.1.0"
