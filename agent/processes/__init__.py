"""The processes slice."""
