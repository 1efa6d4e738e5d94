"""Chromium control: restart the supervisord program that runs it, and know when it is
back (its DevTools answer again on a new connection)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

from agent.browser.cdp import CdpManager
from agent.errors import Unavailable

RPC_TIMEOUT_S = 60.0
# supervisord's fault codes (supervisor.xmlrpc.Faults) that matter here.
BAD_NAME = 10
NOT_RUNNING = 70


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        # One connection per call; the previous one is closed here, the last by close().
        self.close()
        connection = _UnixHTTPConnection(self._path, self._timeout)
        self._connection = (host, connection)
        return connection


@contextlib.contextmanager
def supervisor_rpc(socket_path: str, timeout: float = RPC_TIMEOUT_S) -> Iterator[Any]:
    """supervisord's `supervisor.*` XML-RPC namespace over its unix socket (blocking)."""
    with xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                   transport=_UnixTransport(socket_path, timeout)) as proxy:
        yield proxy.supervisor


def _check_program(socket_path: str, program: str) -> None:
    try:
        with supervisor_rpc(socket_path, 5.0) as supervisor:
            supervisor.getProcessInfo(program)
    except xmlrpc.client.Fault as fault:
        if fault.faultCode == BAD_NAME:
            raise Unavailable(f"supervisord has no program {program!r} to restart Chromium "
                              "with") from None
        raise Unavailable(f"supervisord: {fault.faultString}") from None
    except (OSError, xmlrpc.client.ProtocolError) as exc:
        raise Unavailable(f"cannot restart Chromium: supervisord at {socket_path} is not "
                          f"reachable ({exc})") from None


def _restart_program(socket_path: str, program: str) -> None:
    try:
        with supervisor_rpc(socket_path) as supervisor:
            try:
                supervisor.stopProcess(program, True)
            except xmlrpc.client.Fault as fault:
                if fault.faultCode != NOT_RUNNING:
                    raise
            supervisor.startProcess(program, True)
    except xmlrpc.client.Fault as fault:
        raise Unavailable(f"supervisord could not restart {program!r}: "
                          f"{fault.faultString}") from None
    except (OSError, xmlrpc.client.ProtocolError) as exc:
        raise Unavailable(f"supervisord at {socket_path} failed during the restart of "
                          f"{program!r}: {exc}") from None


async def check_restartable(socket_path: str, program: str) -> None:
    """503 unless supervisord answers and runs `program` (checked before changing files)."""
    await asyncio.to_thread(_check_program, socket_path, program)


async def restart(cdp: CdpManager, socket_path: str, program: str,
                  timeout: float = 60.0) -> None:
    """Restart Chromium through supervisord; returns once DevTools answers again."""
    before = cdp.generation
    await asyncio.to_thread(_restart_program, socket_path, program)
    await cdp.wait_connected(timeout, newer_than=before)
