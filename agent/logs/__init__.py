"""The logs slice."""
