"""Settings: one frozen dataclass, read from `AGENT_*` environment variables with CLI flags
overriding them. Every option is declared once, in `OPTIONS`, with its environment name,
its flag and its help text, so `browser-agent --help` documents exactly what is read.
Nothing else in the daemon reads the environment.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCOPES = ("read", "write", "admin")
TELEMETRY_CATEGORIES = ("console", "network", "page", "interaction")


class ConfigError(ValueError):
    """A setting has a value the daemon cannot run with."""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {text!r}")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"not a number: {text!r}") from None


def _str(text: str) -> str:
    return text


def _opt_str(text: str) -> str | None:
    return text or None


def parse_rate(text: str) -> tuple[int, int]:
    """`6000:1000` → (6000 requests a minute sustained, bursts of 1000)."""
    per_minute, sep, burst = text.strip().partition(":")
    try:
        if not sep:
            raise ValueError
        values = int(per_minute), int(burst)
    except ValueError:
        raise ConfigError(f"expected PER_MINUTE:BURST (e.g. 6000:1000), got {text!r}") from None
    if values[0] < 1 or values[1] < 1:
        raise ConfigError(f"rate and burst must be at least 1: {text!r}")
    return values


MIN_TOKEN_LENGTH = 16
# What a token may be made of: visible ASCII but the list separators (`,` `:` `#`).
_TOKEN_OK = re.compile(r"^[!-~]+$")


def check_token(token: str) -> str:
    """A token the daemon can be run with; ConfigError (never echoing it) otherwise."""
    if not _TOKEN_OK.match(token) or any(c in token for c in ",:#"):
        raise ConfigError("a token may hold only visible ASCII characters other than "
                          "',', ':' and '#'")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"a token is shorter than {MIN_TOKEN_LENGTH} characters "
                          f"({len(token)}); use a long random one, e.g. "
                          "`od -An -N32 -tx1 /dev/urandom | tr -d ' \\n'`")
    return token


def parse_tokens(text: str) -> dict[str, str]:
    """`tok1:read,tok2:write,tok3` → {token: scope}; a token without a scope is admin.
    Items may also be separated by newlines (a tokens file), and `#` starts a comment."""
    tokens: dict[str, str] = {}
    for line in text.splitlines():
        for item in line.partition("#")[0].split(","):
            item = item.strip()
            if not item:
                continue
            token, sep, scope = item.rpartition(":")
            if not sep:
                token, scope = item, "admin"
            elif scope not in SCOPES:
                raise ConfigError(f"unknown scope {scope!r} in token list (read, write "
                                  "or admin)")
            if not token:
                raise ConfigError("empty token in token list")
            tokens[check_token(token)] = scope
    return tokens


def read_secret_file(path: str, what: str) -> str:
    """The content of a secret file (the `_FILE` convention of Docker and Kubernetes
    secrets), surrounding blanks removed."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(1 << 20)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {getattr(exc, 'strerror', exc)}"
                          ) from None
    if not text.strip():
        raise ConfigError(f"{what} {path} is empty")
    return text.strip()


def _host_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class Option:
    name: str  # Settings attribute
    env: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    is_flag: bool = False  # a bare CLI switch (store_true)


OPTIONS: tuple[Option, ...] = (
    Option("host", "AGENT_HOST", "--host", _opt_str,
           "listen address; default 127.0.0.1 without a token, 0.0.0.0 with one"),
    Option("port", "AGENT_PORT", "--port", _int, "listen port (default 10001)"),
    Option("display", "AGENT_DISPLAY", "--display", _str,
           "X display Chromium draws on (default $DISPLAY, else :1)"),
    Option("api_token", "AGENT_API_TOKEN", "--api-token", _str,
           "bearer token with the admin scope"),
    Option("api_tokens", "AGENT_API_TOKENS", "--api-tokens", _str,
           "more tokens with scopes: 'tokA:read,tokB:write,tokC:admin'"),
    Option("api_token_file", "AGENT_API_TOKEN_FILE", "--api-token-file", _opt_str,
           "file holding the admin token (instead of AGENT_API_TOKEN; keeps it out of "
           "every process environment)"),
    Option("api_tokens_file", "AGENT_API_TOKENS_FILE", "--api-tokens-file", _opt_str,
           "file holding scoped tokens as AGENT_API_TOKENS does (commas or one a line)"),
    Option("allowed_hosts", "AGENT_ALLOWED_HOSTS", "--allowed-hosts", _host_list,
           "Host names accepted beside loopback and the listen address, comma-separated "
           "('*.example.com' for subdomains, '*' for any: turns the check off)"),
    Option("allowed_origins", "AGENT_ALLOWED_ORIGINS", "--allowed-origins", _host_list,
           "browser Origins allowed to call the API beside the daemon's own, "
           "comma-separated, e.g. 'https://console.example.com'"),
    Option("allow_unauthenticated", "AGENT_ALLOW_UNAUTHENTICATED", "--allow-unauthenticated",
           _bool, "serve without a token on a non-loopback address (trusted networks only)",
           is_flag=True),
    Option("browser_id", "AGENT_BROWSER_ID", "--browser-id", _opt_str,
           "this browser's id; requests under /browsers/{other id}/ are 404"),
    Option("cdp_address", "AGENT_CDP_ADDRESS", "--cdp-address", _str,
           "Chromium's DevTools host:port (default 127.0.0.1:9223)"),
    Option("log_level", "AGENT_LOG_LEVEL", "--log-level", _str,
           "debug, info, warning or error (default info)"),
    Option("default_user", "AGENT_DEFAULT_USER", "--default-user", _opt_str,
           "the browser's user: owner of created files, user of spawned processes (as root)"),
    Option("max_body_bytes", "AGENT_MAX_JSON_BYTES", "--max-json-bytes", _int,
           "largest JSON request body accepted (default 1 MiB)"),
    Option("rate_limits", "AGENT_RATE_LIMITS", "--rate-limits", _bool,
           "rate limits per token (per client address without one); false turns them off "
           "(default true)"),
    Option("rate_limit_read", "AGENT_RATE_LIMIT_READ", "--rate-limit-read", parse_rate,
           "read requests: PER_MINUTE:BURST (default 6000:1000)"),
    Option("rate_limit_write", "AGENT_RATE_LIMIT_WRITE", "--rate-limit-write", parse_rate,
           "write and admin requests: PER_MINUTE:BURST (default 3000:500)"),
    Option("rate_limit_process", "AGENT_RATE_LIMIT_PROCESS", "--rate-limit-process",
           parse_rate, "process starts (exec, spawn): PER_MINUTE:BURST (default 600:100)"),
    Option("sse_keepalive_s", "AGENT_SSE_KEEPALIVE", "--sse-keepalive", _float,
           "seconds between SSE keepalive comments (default 15)"),
    # limits a client cannot push past (each answers a clear error; SECURITY.md)
    Option("max_connections", "AGENT_MAX_CONNECTIONS", "--max-connections", _int,
           "most open client connections; more are answered 503 and closed (default 256)"),
    Option("header_timeout_s", "AGENT_HEADER_TIMEOUT", "--header-timeout", _float,
           "seconds a connection may take to send a request's headers, and may stay idle "
           "between requests (default 30)"),
    Option("body_timeout_s", "AGENT_BODY_TIMEOUT", "--body-timeout", _float,
           "seconds a request body may go without sending a byte (default 60)"),
    Option("max_streams", "AGENT_MAX_STREAMS", "--max-streams", _int,
           "most concurrent event streams and WebSockets (SSE, attach, DevTools) "
           "(default 64)"),
    Option("max_watches", "AGENT_MAX_WATCHES", "--max-watches", _int,
           "most live filesystem watches (default 64)"),
    Option("max_watch_dirs", "AGENT_MAX_WATCH_DIRS", "--max-watch-dirs", _int,
           "most directories (inotify watches) all watches hold together (default 65536)"),
    Option("unsized_read_max_bytes", "AGENT_UNSIZED_READ_MAX", "--unsized-read-max", _int,
           "most bytes read_file sends of a file that reports size 0 (/proc, /sys) "
           "(default 16 MiB)"),
    Option("zip_download_max_bytes", "AGENT_ZIP_DOWNLOAD_MAX_BYTES", "--zip-download-max-bytes",
           _int, "most file bytes one download_dir_zip archives (default 8 GiB)"),
    Option("curl_max_bytes", "AGENT_CURL_MAX_BYTES", "--curl-max-bytes", _int,
           "largest /curl response body (default 64 MiB)"),
    Option("cdp_max_message_bytes", "AGENT_CDP_MAX_MESSAGE", "--cdp-max-message", _int,
           "largest DevTools message the public DevTools endpoint relays (default 128 MiB)"),
    Option("clipboard_max_bytes", "AGENT_CLIPBOARD_MAX", "--clipboard-max", _int,
           "largest clipboard content read (default 16 MiB)"),
    # files
    Option("zip_max_entries", "AGENT_ZIP_MAX_ENTRIES", "--zip-max-entries", _int,
           "most entries an uploaded zip may hold (default 10000)"),
    Option("zip_max_bytes", "AGENT_ZIP_MAX_BYTES", "--zip-max-bytes", _int,
           "largest total uncompressed size of an uploaded zip (default 2 GiB)"),
    Option("watch_buffer", "AGENT_WATCH_BUFFER", "--watch-buffer", _int,
           "events a watch keeps for readers and Last-Event-ID resume (default 4096)"),
    Option("watch_idle_s", "AGENT_WATCH_IDLE", "--watch-idle", _float,
           "seconds an unread watch lives before it expires (default 600)"),
    # processes
    Option("max_processes", "AGENT_MAX_PROCESSES", "--max-processes", _int,
           "most live spawned processes (default 64)"),
    Option("process_retention_s", "AGENT_PROCESS_RETENTION", "--process-retention", _float,
           "seconds an exited process stays queryable (default 600)"),
    Option("exec_output_cap", "AGENT_EXEC_OUTPUT_CAP", "--exec-output-cap", _int,
           "bytes of stdout and of stderr kept by exec (default 16 MiB each)"),
    Option("process_output_bytes", "AGENT_PROCESS_OUTPUT_MAX", "--process-output-max", _int,
           "bytes of output a spawned process keeps on disk for its readers; beyond it the "
           "oldest is dropped and readers are told (default 1 GiB)"),
    Option("process_spool_dir", "AGENT_PROCESS_SPOOL_DIR", "--process-spool-dir", _str,
           "where the daemon makes its own directory of process output spools (default: "
           "the system's temporary directory)"),
    Option("kill_grace_s", "AGENT_KILL_GRACE", "--kill-grace", _float,
           "seconds between TERM and KILL when stopping processes (default 5)"),
    Option("adopt_orphans", "AGENT_ADOPT_ORPHANS", "--adopt-orphans", _bool,
           "adopt descendants that leave their session (setsid) as a child subreaper, reap "
           "them and stop them on shutdown; only for a process whose children all come "
           "from the daemon (default true)"),
    # logs and supervisord
    Option("supervisor_socket", "AGENT_SUPERVISOR_SOCKET", "--supervisor-socket", _str,
           "supervisord's XML-RPC unix socket (default /run/browser-agent/supervisor.sock)"),
    # browser
    Option("cdp_proxy_host", "AGENT_CDP_PROXY_HOST", "--cdp-proxy-host", _opt_str,
           "address of the public DevTools endpoint (default: the API's host)"),
    Option("cdp_proxy_port", "AGENT_CDP_PROXY_PORT", "--cdp-proxy-port", _int,
           "port of the public DevTools endpoint; 0 turns it off (default 9222)"),
    Option("extensions_dir", "AGENT_EXTENSIONS_DIR", "--extensions-dir", _str,
           "where uploaded extensions are unpacked (default ~browser-user/extensions)"),
    Option("chromium_program", "AGENT_CHROMIUM_PROGRAM", "--chromium-program", _str,
           "supervisord program that runs Chromium (default chromium)"),
    # playwright
    Option("node_program", "AGENT_NODE", "--node", _str,
           "the node binary Playwright code runs under (default node)"),
    Option("playwright_dir", "AGENT_PLAYWRIGHT_DIR", "--playwright-dir", _str,
           "directory of the Playwright worker and its node_modules (default: the "
           "package's agent/playwright/runtime)"),
    Option("playwright_max_executors", "AGENT_PLAYWRIGHT_MAX_EXECUTORS",
           "--playwright-max-executors", _int,
           "most named Playwright executors, each a Node process and a tab (default 8)"),
    Option("playwright_output_cap", "AGENT_PLAYWRIGHT_OUTPUT_CAP", "--playwright-output-cap",
           _int, "bytes of stdout and of stderr kept per Playwright call (default 1 MiB each)"),
    Option("playwright_prewarm", "AGENT_PLAYWRIGHT_PREWARM", "--playwright-prewarm", _bool,
           "start the default Playwright worker with the daemon instead of on first use "
           "(default false)"),
    # telemetry
    Option("telemetry_categories", "AGENT_TELEMETRY_CATEGORIES", "--telemetry-categories",
           _str, "telemetry captured from the start: 'all', 'none' or a list of console, "
           "network, page, interaction (default none; PUT /telemetry/config changes it)"),
    Option("telemetry_dir", "AGENT_TELEMETRY_DIR", "--telemetry-dir", _str,
           "daemon-owned directory of the telemetry history "
           "(default /var/lib/browser-agent/telemetry)"),
    Option("telemetry_history_bytes", "AGENT_TELEMETRY_HISTORY_BYTES",
           "--telemetry-history-bytes", _int,
           "bytes of telemetry history kept on disk, in 8 rotated files (default 128 MiB)"),
    Option("telemetry_buffer", "AGENT_TELEMETRY_BUFFER", "--telemetry-buffer", _int,
           "telemetry events kept in memory for streams and Last-Event-ID (default 16384)"),
    Option("telemetry_buffer_bytes", "AGENT_TELEMETRY_BUFFER_BYTES",
           "--telemetry-buffer-bytes", _int,
           "bytes of telemetry events kept in memory (default 64 MiB)"),
    # replays
    Option("replays_dir", "AGENT_REPLAYS_DIR", "--replays-dir", _str,
           "where screen recordings and their metadata live, owned by the daemon (default "
           "/var/lib/browser-agent/replays as root, else ~/.local/state/browser-agent/replays)"),
    Option("replays_max_active", "AGENT_REPLAYS_MAX_ACTIVE", "--replays-max-active", _int,
           "most recordings running at once; more is a 409 (default 2)"),
    Option("replay_max_bytes", "AGENT_REPLAY_MAX_BYTES", "--replay-max-bytes", _int,
           "bytes one recording may reach; it stops by itself there (default 1 GiB)"),
    Option("replays_max_total_bytes", "AGENT_REPLAYS_MAX_TOTAL_BYTES",
           "--replays-max-total-bytes", _int,
           "bytes all recordings may take on disk; the oldest finished ones are deleted to "
           "stay below it (default 8 GiB)"),
    Option("replay_max_duration_s", "AGENT_REPLAY_MAX_DURATION", "--replay-max-duration", _int,
           "longest recording in seconds: the default and the largest "
           "max_duration_in_seconds accepted (default 3600)"),
    Option("ffmpeg", "AGENT_FFMPEG", "--ffmpeg", _str,
           "the ffmpeg executable that records the screen (default ffmpeg, from PATH)"),
)


@dataclass(frozen=True)
class Settings:
    host: str | None = None
    port: int = 10001
    display: str = ":1"
    api_token: str = ""
    api_tokens: str = ""
    api_token_file: str | None = None
    api_tokens_file: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    allow_unauthenticated: bool = False
    browser_id: str | None = None
    cdp_address: str = "127.0.0.1:9223"
    log_level: str = "info"
    default_user: str | None = None
    max_body_bytes: int = 1 << 20
    sse_keepalive_s: float = 15.0
    rate_limits: bool = True
    rate_limit_read: tuple[int, int] = (6000, 1000)
    rate_limit_write: tuple[int, int] = (3000, 500)
    rate_limit_process: tuple[int, int] = (600, 100)
    max_connections: int = 256
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    max_streams: int = 64
    max_watches: int = 64
    max_watch_dirs: int = 65536
    unsized_read_max_bytes: int = 16 << 20
    zip_download_max_bytes: int = 8 << 30
    curl_max_bytes: int = 64 << 20
    cdp_max_message_bytes: int = 128 << 20
    clipboard_max_bytes: int = 16 << 20
    zip_max_entries: int = 10_000
    zip_max_bytes: int = 2 << 30
    watch_buffer: int = 4096
    watch_idle_s: float = 600.0
    max_processes: int = 64
    process_retention_s: float = 600.0
    exec_output_cap: int = 16 << 20
    process_output_bytes: int = 1 << 30
    process_spool_dir: str = ""
    kill_grace_s: float = 5.0
    supervisor_socket: str = "/run/browser-agent/supervisor.sock"
    cdp_proxy_host: str | None = None
    cdp_proxy_port: int = 9222
    extensions_dir: str = ""
    chromium_program: str = "chromium"
    node_program: str = "node"
    playwright_dir: str = ""
    playwright_max_executors: int = 8
    playwright_output_cap: int = 1 << 20
    playwright_prewarm: bool = False
    telemetry_categories: str = ""
    telemetry_dir: str = "/var/lib/browser-agent/telemetry"
    telemetry_history_bytes: int = 128 << 20
    telemetry_buffer: int = 16384
    telemetry_buffer_bytes: int = 64 << 20
    replays_dir: str = ""
    replays_max_active: int = 2
    replay_max_bytes: int = 1 << 30
    replays_max_total_bytes: int = 8 << 30
    replay_max_duration_s: int = 3600
    ffmpeg: str = "ffmpeg"
    tokens: Mapping[str, str] = field(default_factory=dict)
    adopt_orphans: bool = True

    @property
    def listen_host(self) -> str:
        if self.host:
            return self.host
        return "0.0.0.0" if self.tokens else "127.0.0.1"

    @property
    def auth_required(self) -> bool:
        return bool(self.tokens)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="browser-agent",
        description="In-VM browser agent daemon: the per-browser Kernel API over HTTP. "
        "Every flag has an environment twin (shown in brackets); flags win.",
    )
    for opt in OPTIONS:
        if opt.is_flag:
            parser.add_argument(opt.flag, dest=opt.name, action="store_const", const="1",
                                default=None, help=f"{opt.help} [{opt.env}]")
        else:
            parser.add_argument(opt.flag, dest=opt.name, default=None,
                                help=f"{opt.help} [{opt.env}]")
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Environment first, then CLI flags; validates what cannot be run with."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if env.get("DISPLAY"):
        values["display"] = env["DISPLAY"]
    for opt in OPTIONS:
        raw = getattr(args, opt.name)
        if raw is None:
            raw = env.get(opt.env)
        if raw is None:
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except ConfigError as exc:
            raise ConfigError(f"{opt.flag} / {opt.env}: {exc}") from None
    return make_settings(**values)


def make_settings(**values: Any) -> Settings:
    """Build and check a Settings (also what tests use to configure an app)."""
    tokens = dict(values.pop("tokens", {}) or {})
    for token in tokens:
        check_token(token)
    for name in ("allowed_hosts", "allowed_origins"):
        if isinstance(values.get(name), str):
            values[name] = _host_list(values[name])
    try:
        if values.get("api_token"):
            tokens[check_token(values["api_token"])] = "admin"
        if values.get("api_token_file"):
            token = read_secret_file(values["api_token_file"], "the token file")
            tokens[check_token(token)] = "admin"
        if values.get("api_tokens"):
            tokens.update(parse_tokens(values["api_tokens"]))
        if values.get("api_tokens_file"):
            tokens.update(parse_tokens(read_secret_file(values["api_tokens_file"],
                                                        "the tokens file")))
    except ConfigError as exc:
        raise ConfigError(f"API tokens: {exc}") from None
    settings = Settings(**values, tokens=tokens)
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: unknown level {settings.log_level!r}")
    for name in ("rate_limit_read", "rate_limit_write", "rate_limit_process"):
        per_minute, burst = getattr(settings, name)
        if per_minute < 1 or burst < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: rate and burst must be at least 1")
    if settings.playwright_max_executors < 0:
        raise ConfigError("--playwright-max-executors: must be 0 or more")
    if settings.playwright_output_cap < 1:
        raise ConfigError("--playwright-output-cap: must be at least 1")
    if not all(part.strip() in ("", "all", "none", "off", *TELEMETRY_CATEGORIES)
               for part in settings.telemetry_categories.lower().split(",")):
        raise ConfigError(f"--telemetry-categories: unknown category in "
                          f"{settings.telemetry_categories!r}")
    if settings.telemetry_buffer < 1 or settings.telemetry_buffer_bytes < 1 << 20:
        raise ConfigError("--telemetry-buffer must be at least 1 and "
                          "--telemetry-buffer-bytes at least 1 MiB")
    if settings.telemetry_history_bytes < 1 << 20:
        raise ConfigError("--telemetry-history-bytes must be at least 1 MiB")
    for name in ("replays_max_active", "replay_max_bytes", "replays_max_total_bytes",
                 "replay_max_duration_s"):
        if getattr(settings, name) < 1:
            flag = next(opt.flag for opt in OPTIONS if opt.name == name)
            raise ConfigError(f"{flag}: must be at least 1")
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"--port: out of range: {settings.port}")
    if (
        not settings.tokens
        and not settings.allow_unauthenticated
        and not is_loopback(settings.listen_host)
    ):
        raise ConfigError(
            f"refusing to listen on {settings.listen_host} without an API token: set "
            "AGENT_API_TOKEN, or pass --allow-unauthenticated on a trusted network"
        )
    for opt in OPTIONS:
        value = getattr(settings, opt.name)
        if opt.name.startswith(("max_", "body_", "header_")) or opt.name.endswith(
                "_max_bytes"):
            if not value > 0:
                raise ConfigError(f"{opt.flag} / {opt.env}: must be positive, got {value}")
    for origin in settings.allowed_origins:
        if not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(f"--allowed-origins: not an origin (scheme://host[:port]): "
                              f"{origin!r}")
    return settings


def check_identity(settings: Settings, euid: int | None = None) -> None:
    """As root, a browser user must be configured (and exist, and not be root): the
    daemon acts on files and starts processes as that user, never silently as root."""
    if (os.geteuid() if euid is None else euid) != 0:
        return
    user = settings.default_user
    if not user:
        raise ConfigError(
            "refusing to run as root without a browser user: set AGENT_DEFAULT_USER "
            "(--default-user) to the unprivileged user Chromium runs as; file and process "
            "operations act as that user")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--default-user / AGENT_DEFAULT_USER: no such user: {user!r}"
                          ) from None
    if entry.pw_uid == 0:
        raise ConfigError("--default-user / AGENT_DEFAULT_USER must be an unprivileged "
                          f"user, not {user!r} (uid 0)")
