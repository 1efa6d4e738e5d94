"""Telemetry: the browser's console, network, page and interaction events over CDP."""
