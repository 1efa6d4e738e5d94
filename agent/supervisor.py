"""The few supervisord calls the daemon makes, over its XML-RPC unix socket: where a
program's log is (the logs slice never guesses paths: supervisord knows them, including
the generated names of `AUTO` logs) and restarting a program (the browser slice restarts
Chromium). The calls block (`xmlrpc.client` over a unix-socket HTTP connection); callers
run them on a thread.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from typing import Any

from agent.errors import AgentError, BadGateway, BadRequest, NotFound, Unavailable

# supervisord's fault codes (supervisor.xmlrpc.Faults) that mean something to a client.
FAULT_SHUTDOWN_STATE = 6
FAULT_BAD_NAME = 10
FAULT_NOT_RUNNING = 70

TIMEOUT_S = 5.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__()
        self._socket_path = socket_path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = _UnixConnection(self._socket_path, self._timeout)
        self._connection = (host, connection)  # so that close() closes it
        return connection


def _shorten(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def check_program_name(name: str) -> None:
    """Names supervisord could never have (and XML-RPC cannot carry) are bad requests."""
    if not name:
        raise BadRequest.for_field(
            "supervisor_process", "is empty", "supervisor_process must not be empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise BadRequest.for_field(
            "supervisor_process", "contains control characters",
            "supervisor_process must not contain control characters")


class SupervisorClient:
    """The few supervisord calls the daemon makes. Every method blocks."""

    def __init__(self, socket_path: str, timeout: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self._timeout = timeout

    def _call(self, method: str, *args: Any, timeout: float | None = None,
              allowed_faults: tuple[int, ...] = ()) -> Any:
        """One call; a fault whose code is in `allowed_faults` answers None."""
        timeout = self._timeout if timeout is None else timeout
        transport = _UnixTransport(self.socket_path, timeout)
        proxy = xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport,
                                          allow_none=True)
        try:
            return getattr(proxy, method)(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode in allowed_faults:
                return None
            raise self._fault_error(method, args, fault) from None
        except xmlrpc.client.ProtocolError as exc:
            raise BadGateway(f"supervisord refused {method}: HTTP {exc.errcode} "
                             f"{exc.errmsg}") from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise Unavailable(f"supervisord is not running (nothing answers on "
                              f"{self.socket_path})", code="supervisor_unavailable") from None
        except TimeoutError:
            raise Unavailable(f"supervisord did not answer within {timeout:g}s on "
                              f"{self.socket_path}", code="supervisor_unavailable") from None
        except OSError as exc:
            raise Unavailable(f"cannot reach supervisord on {self.socket_path}: "
                              f"{exc.strerror or exc}", code="supervisor_unavailable") from None
        except (xmlrpc.client.ResponseError, http.client.HTTPException) as exc:
            raise BadGateway(f"supervisord sent a malformed answer to {method}: "
                             f"{exc}") from None
        finally:
            proxy("close")()

    def _fault_error(self, method: str, args: tuple[Any, ...], fault: xmlrpc.client.Fault
                     ) -> AgentError:
        if fault.faultCode == FAULT_BAD_NAME:
            name = str(args[0]) if args else ""
            return NotFound(f"supervisord has no program named {_shorten(name)!r}")
        if fault.faultCode == FAULT_SHUTDOWN_STATE:
            return Unavailable("supervisord is shutting down", code="supervisor_unavailable")
        return BadGateway(f"supervisord {method} failed: {fault.faultString}")

    def process_info(self, name: str) -> dict[str, Any]:
        check_program_name(name)
        info = self._call("supervisor.getProcessInfo", name)
        if not isinstance(info, dict):
            raise BadGateway("supervisord answered getProcessInfo with something other "
                             "than a struct")
        return info

    def stdout_logfile(self, name: str) -> str:
        """The path of a program's stdout log (which holds stderr too when the program
        has `redirect_stderr=true`)."""
        info = self.process_info(name)
        path = info.get("stdout_logfile") or ""
        if not isinstance(path, str) or not path or path.upper() == "NONE":
            raise NotFound(f"supervisord program {name!r} keeps no stdout log file "
                           "(its stdout_logfile is NONE)")
        if path.startswith(("/dev/", "/proc/")):
            # e.g. /dev/stdout: supervisord's own output, not a file the daemon can follow
            raise NotFound(f"supervisord program {name!r} logs to {path}, not to a file")
        return path

    def restart(self, name: str, timeout: float = 60.0) -> None:
        """Stop `name` (if it runs) and start it again, waiting for both."""
        check_program_name(name)
        self._call("supervisor.stopProcess", name, True, timeout=timeout,
                   allowed_faults=(FAULT_NOT_RUNNING,))
        self._call("supervisor.startProcess", name, True, timeout=timeout)
