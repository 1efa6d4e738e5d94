"""The files slice."""
