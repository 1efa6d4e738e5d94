"""The computer slice."""
