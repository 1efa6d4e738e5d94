"""Playwright execute: user code in warm Node workers, one per executor."""
