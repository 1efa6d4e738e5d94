"""Fixtures shared by the integration tests (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_support import SupervisedChromium, supervised_chromium
from helpers import running_xvfb


@pytest.fixture(scope="module")
def supervised() -> Iterator[SupervisedChromium]:
    """Chromium run by a real supervisord on an Xvfb of its own, as in the image; one per
    test module (the tests may restart it)."""
    with running_xvfb(1280, 800) as display, supervised_chromium(display.name) as browser:
        yield browser
