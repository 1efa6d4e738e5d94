"""Settings: environment, CLI overrides, token scopes, and the secure-by-default rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, check_identity, load_settings, parse_tokens


def test_defaults_listen_on_loopback_without_token() -> None:
    settings = load_settings([], {})
    assert settings.listen_host == "127.0.0.1"
    assert settings.port == 10001
    assert settings.display == ":1"
    assert settings.cdp_address == "127.0.0.1:9223"
    assert not settings.auth_required


def test_display_falls_back_to_DISPLAY_then_flag_wins() -> None:
    assert load_settings([], {"DISPLAY": ":7"}).display == ":7"
    assert load_settings([], {"DISPLAY": ":7", "AGENT_DISPLAY": ":8"}).display == ":8"
    assert load_settings(["--display", ":9"], {"AGENT_DISPLAY": ":8"}).display == ":9"


def test_cli_overrides_environment() -> None:
    env = {"AGENT_PORT": "7000", "AGENT_LOG_LEVEL": "debug"}
    settings = load_settings(["--port", "7001"], env)
    assert settings.port == 7001
    assert settings.log_level == "debug"


SECRET = "s3cret-0123456789abcdef"
A, B, C, D = ("a" * 16, "b" * 16, "c" * 16, "d" * 16)


def test_token_makes_the_default_host_public_and_requires_auth() -> None:
    settings = load_settings([], {"AGENT_API_TOKEN": SECRET})
    assert settings.listen_host == "0.0.0.0"
    assert settings.tokens == {SECRET: "admin"}


def test_scoped_tokens() -> None:
    assert parse_tokens(f"{A}:read, {B}:write,{C}:admin,{D}") == {
        A: "read", B: "write", C: "admin", D: "admin",
    }
    # newlines separate too (a tokens file), and # starts a comment
    assert parse_tokens(f"# tokens\n{A}:read\n\n{B}:write  # the CI\n") == {
        A: "read", B: "write"}


def test_unknown_scope_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown scope 'reed'"):
        load_settings([], {"AGENT_API_TOKENS": f"{A}:reed"})


@pytest.mark.parametrize("token", ["short-token", "x" * 15, "with space-0123456789",
                                   "caf\u00e9-0123456789abc"])
def test_short_or_odd_tokens_are_refused_at_start(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([], {"AGENT_API_TOKEN": token})
    assert token not in str(caught.value)  # never echoed


def test_tokens_from_files(tmp_path: Path) -> None:
    admin = tmp_path / "admin"
    admin.write_text(SECRET + "\n")
    scoped = tmp_path / "scoped"
    scoped.write_text(f"{A}:read\n{B}:write\n")
    settings = load_settings(["--api-tokens-file", str(scoped)],
                             {"AGENT_API_TOKEN_FILE": str(admin)})
    assert settings.tokens == {SECRET: "admin", A: "read", B: "write"}
    with pytest.raises(ConfigError, match="cannot read the token file"):
        load_settings([], {"AGENT_API_TOKEN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings([], {"AGENT_API_TOKEN_FILE": str(tmp_path / "empty")})


def test_root_needs_an_unprivileged_browser_user() -> None:
    settings = load_settings([], {})
    with pytest.raises(ConfigError, match="AGENT_DEFAULT_USER"):
        check_identity(settings, euid=0)
    check_identity(settings, euid=1000)  # not root: acts as itself
    with pytest.raises(ConfigError, match="no such user"):
        check_identity(load_settings([], {"AGENT_DEFAULT_USER": "no-such-user-xyz"}), euid=0)
    with pytest.raises(ConfigError, match="unprivileged"):
        check_identity(load_settings([], {"AGENT_DEFAULT_USER": "root"}), euid=0)
    check_identity(load_settings([], {"AGENT_DEFAULT_USER": "nobody"}), euid=0)


def test_allowed_hosts_and_origins() -> None:
    settings = load_settings([], {"AGENT_ALLOWED_HOSTS": "VM1.example, *.corp",
                                  "AGENT_ALLOWED_ORIGINS": "https://console.example.com"})
    assert settings.allowed_hosts == ("vm1.example", "*.corp")
    assert settings.allowed_origins == ("https://console.example.com",)
    with pytest.raises(ConfigError, match="not an origin"):
        load_settings([], {"AGENT_ALLOWED_ORIGINS": "console.example.com/x"})


def test_refuses_public_address_without_token() -> None:
    with pytest.raises(ConfigError, match="without an API token"):
        load_settings(["--host", "0.0.0.0"], {})


def test_allow_unauthenticated_flag_and_env_twin() -> None:
    assert load_settings(["--host", "0.0.0.0", "--allow-unauthenticated"], {}).listen_host == (
        "0.0.0.0"
    )
    env = {"AGENT_HOST": "0.0.0.0", "AGENT_ALLOW_UNAUTHENTICATED": "true"}
    assert load_settings([], env).allow_unauthenticated


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "nope"], "not an integer"),
        (["--port", "70000"], "out of range"),
        (["--log-level", "loud"], "unknown level"),
    ],
)
def test_bad_values_are_clear_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(argv, {})


def test_bad_boolean_in_environment() -> None:
    with pytest.raises(ConfigError, match="AGENT_ALLOW_UNAUTHENTICATED"):
        load_settings([], {"AGENT_ALLOW_UNAUTHENTICATED": "maybe"})


def test_playwright_settings() -> None:
    settings = load_settings([], {})
    assert (settings.node_program, settings.playwright_max_executors,
            settings.playwright_output_cap, settings.playwright_prewarm) == ("node", 8, 1 << 20,
                                                                             False)
    settings = load_settings(["--playwright-max-executors", "3", "--node", "/opt/node"],
                             {"AGENT_PLAYWRIGHT_PREWARM": "1",
                              "AGENT_PLAYWRIGHT_DIR": "/opt/pw"})
    assert settings.playwright_max_executors == 3
    assert settings.node_program == "/opt/node"
    assert settings.playwright_prewarm is True
    assert settings.playwright_dir == "/opt/pw"
    with pytest.raises(ConfigError, match="playwright-output-cap"):
        load_settings(["--playwright-output-cap", "0"], {})
