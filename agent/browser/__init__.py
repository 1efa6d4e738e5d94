"""The browser slice."""
