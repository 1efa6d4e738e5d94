"""Settings: environment, CLI overrides, token scopes, and the secure-by-default rules."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load_settings, parse_tokens


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


def test_token_makes_the_default_host_public_and_requires_auth() -> None:
    settings = load_settings([], {"AGENT_API_TOKEN": "s3cret"})
    assert settings.listen_host == "0.0.0.0"
    assert settings.tokens == {"s3cret": "admin"}


def test_scoped_tokens() -> None:
    assert parse_tokens("a:read, b:write,c:admin,d") == {
        "a": "read", "b": "write", "c": "admin", "d": "admin",
    }
    # a colon inside a token is kept when the suffix is not a scope
    assert parse_tokens("x:y") == {"x:y": "admin"}


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
