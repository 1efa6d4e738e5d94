"""Playwright slice parts that need no browser: who may read the worker's files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import Unavailable
from agent.playwright.worker import identity_for, readable_by
from agent.processes.launch import Identity

SOMEONE = Identity("someone", 54321, 54321, (), "/nonexistent", "/bin/sh", True)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A directory in /tmp (world-searchable), unlike pytest's private tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="agent-readable-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_readable_by_follows_every_directory_above(public_tmp: Path) -> None:
    outer = public_tmp / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    script = inner / "worker.mjs"
    script.write_text("//")
    outer.chmod(0o755)
    inner.chmod(0o755)
    script.chmod(0o644)
    assert readable_by(script, SOMEONE)
    outer.chmod(0o700)
    assert not readable_by(script, SOMEONE)
    outer.chmod(0o711)  # searchable without listing is enough
    assert readable_by(script, SOMEONE)
    script.chmod(0o600)
    assert not readable_by(script, SOMEONE)
    assert not readable_by(public_tmp / "missing", SOMEONE)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_readable_by_its_owner_and_group(public_tmp: Path) -> None:
    script = public_tmp / "worker.mjs"
    script.write_text("//")
    os.chown(script, SOMEONE.uid, 0)
    script.chmod(0o400)
    assert readable_by(script, SOMEONE)
    os.chown(script, 0, SOMEONE.gid)
    script.chmod(0o040)
    assert readable_by(script, SOMEONE)
    script.chmod(0o400)
    assert not readable_by(script, SOMEONE)


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root daemon switches users")
def test_user_code_never_runs_as_root() -> None:
    """Besides the daemon's own refusal to start as root without a browser user."""
    for user in (None, "", "root"):
        with pytest.raises(Unavailable, match=r"root|AGENT_DEFAULT_USER"):
            identity_for(user)
    with pytest.raises(Unavailable, match="does not exist"):
        identity_for("no-such-user-xyz")
