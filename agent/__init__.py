"""In-VM browser agent daemon: the per-browser Kernel API over HTTP."""

__version__ = "0.1.0"
