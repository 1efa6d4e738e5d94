#!/bin/sh
# `make run`: the whole stack (Xvfb, Chromium, the daemon) on this host, from exactly the
# files the image uses, with supervisord in the foreground (Ctrl-C stops everything).
#
# As root: Chromium runs as $AGENT_DEFAULT_USER (default `browser`, created when missing)
# and logs go to /var/log/browser-agent, as in the image. As another user: Chromium runs
# as you, logs and the supervisor socket go under your own directories.
# Without AGENT_DISPLAY the first free display from :1 up is used. Every variable of
# scripts/stack-env.sh and of `browser-agent --help` may be set in the environment.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
export STACK_HOME="$repo"

if [ -z "${STACK_AGENT_BIN:-}" ]; then
    if [ -x "$repo/.venv/bin/browser-agent" ]; then
        STACK_AGENT_BIN="$repo/.venv/bin/browser-agent"
    elif command -v browser-agent >/dev/null 2>&1; then
        STACK_AGENT_BIN=$(command -v browser-agent)
    else
        echo "run-local: no browser-agent found: run 'make install' (or pip install .) first" >&2
        exit 1
    fi
    export STACK_AGENT_BIN
fi

if [ "$(id -u)" = 0 ]; then
    : "${AGENT_DEFAULT_USER:=browser}"
    if ! getent passwd "$AGENT_DEFAULT_USER" >/dev/null; then
        echo "run-local: creating user $AGENT_DEFAULT_USER"
        useradd --create-home --user-group --shell /bin/bash "$AGENT_DEFAULT_USER"
    fi
else
    : "${AGENT_DEFAULT_USER:=$(id -un)}"
    state=${XDG_STATE_HOME:-$HOME/.local/state}/browser-agent
    runtime=${XDG_RUNTIME_DIR:-/tmp/browser-agent-$(id -u)}
    : "${STACK_LOG_DIR:=$state/log}"
    : "${AGENT_SUPERVISOR_SOCKET:=$runtime/browser-agent/supervisor.sock}"
    export STACK_LOG_DIR AGENT_SUPERVISOR_SOCKET
fi
export AGENT_DEFAULT_USER

if [ -z "${AGENT_DISPLAY:-}" ]; then
    n=1
    while [ -e "/tmp/.X$n-lock" ] || [ -e "/tmp/.X11-unix/X$n" ]; do n=$((n + 1)); done
    export AGENT_DISPLAY=":$n"
fi

# Chromium runs as the browser user, who may not be able to reach this checkout (one in a
# private directory, such as `mktemp -d`'s): then its launcher runs from a copy in a
# directory of root's that anyone can read (the browser user cannot change it).
if [ "$(id -u)" = 0 ] && [ -z "${STACK_LAUNCHERS:-}" ] &&
        ! runuser -u "$AGENT_DEFAULT_USER" -- test -r "$repo/scripts/chromium-launch.sh"; then
    STACK_LAUNCHERS=$(mktemp -d /tmp/browser-agent-launchers.XXXXXX)
    install -m 755 "$repo/scripts/chromium-launch.sh" "$STACK_LAUNCHERS/"
    install -m 644 "$repo/scripts/stack-env.sh" "$STACK_LAUNCHERS/"
    chmod 755 "$STACK_LAUNCHERS"
    export STACK_LAUNCHERS
    echo "run-local: $AGENT_DEFAULT_USER cannot read $repo; Chromium's launcher runs from" \
        "a copy in $STACK_LAUNCHERS"
fi

# shellcheck source=scripts/stack-env.sh
. "$repo/scripts/stack-env.sh"
stack_prepare_dirs

# Tokens go into files only the daemon's user can read; no process environment (of
# supervisord, the launchers or Chromium) holds them.
secrets_dir="$STACK_RUN_DIR/secrets"
for name in AGENT_API_TOKEN AGENT_API_TOKENS; do
    value=$(printenv "$name" || true)
    [ -n "$value" ] || continue
    file="$secrets_dir/$(echo "$name" | tr '[:upper:]_' '[:lower:]-')"
    (umask 077 && mkdir -p "$secrets_dir" && printf '%s\n' "$value" >"$file")
    export "${name}_FILE=$file"
done
unset AGENT_API_TOKEN AGENT_API_TOKENS value

if [ -S "$AGENT_SUPERVISOR_SOCKET" ] && supervisorctl -c "$repo/supervisor/supervisord.conf" pid >/dev/null 2>&1; then
    echo "run-local: a supervisord already answers on $AGENT_SUPERVISOR_SOCKET" >&2
    exit 1
fi

echo "run-local: display $AGENT_DISPLAY ($XVFB_SCREEN), Chromium as $AGENT_DEFAULT_USER" \
    "(DevTools $AGENT_CDP_ADDRESS), API on port ${AGENT_PORT:-10001}, logs in $STACK_LOG_DIR"
exec supervisord --nodaemon -c "$repo/supervisor/supervisord.conf"
