"""The docs slice: an interactive explorer of the daemon's own OpenAPI document."""
