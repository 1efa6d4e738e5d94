#!/bin/sh
# The image's entry point: `entrypoint.sh supervisord` (the default) or `entrypoint.sh
# systemd`. It settles the API token, prepares the directories, then execs the process
# manager as PID 1 (so `docker stop` reaches it directly).
#
# Security default: with neither AGENT_API_TOKEN nor AGENT_API_TOKENS given, and
# AGENT_ALLOW_UNAUTHENTICATED not set to a true value, a random admin token is made at
# the first start, printed once in the log, and kept (mode 0600) for later restarts.
set -eu

mode=${1:-supervisord}
STACK_HOME=${STACK_HOME:-/opt/browser-agent}
token_file=/var/lib/browser-agent/api-token

case $(printf '%s' "${AGENT_ALLOW_UNAUTHENTICATED:-}" | tr '[:upper:]' '[:lower:]') in
    1 | true | yes | on) unauthenticated=1 ;;
    *) unauthenticated=0 ;;
esac

if [ -z "${AGENT_API_TOKEN:-}" ] && [ -z "${AGENT_API_TOKENS:-}" ]; then
    if [ "$unauthenticated" = 1 ]; then
        echo "browser-agent: AGENT_ALLOW_UNAUTHENTICATED is set: the API takes no token (trusted networks only)"
    elif [ -s "$token_file" ]; then
        AGENT_API_TOKEN=$(cat "$token_file")
        export AGENT_API_TOKEN
        echo "browser-agent: using the API token made at the first start (printed then; also in $token_file)"
    else
        AGENT_API_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
        export AGENT_API_TOKEN
        mkdir -p "$(dirname "$token_file")"
        (umask 077 && printf '%s\n' "$AGENT_API_TOKEN" >"$token_file")
        echo "browser-agent: no AGENT_API_TOKEN given; generated one (shown only this once):"
        echo "browser-agent: AGENT_API_TOKEN=$AGENT_API_TOKEN"
    fi
fi

case $mode in
    supervisord)
        # shellcheck source=scripts/stack-env.sh
        . "$STACK_HOME/scripts/stack-env.sh"
        stack_prepare_dirs
        exec supervisord --nodaemon -c "$STACK_HOME/supervisor/supervisord.conf"
        ;;
    systemd)
        # systemd gives its services a clean environment: hand them the container's
        # settings through the units' EnvironmentFile (root only: it holds the token).
        # The launchers fill in the defaults, as they do under supervisord.
        env_file=/etc/browser-agent/browser-agent.env
        mkdir -p "$(dirname "$env_file")"
        umask 077
        (
            echo "# Written by the entry point from the container's environment."
            env | LC_ALL=C sort | while IFS= read -r line; do
                name=${line%%=*}
                case $name in
                    AGENT_* | STACK_* | XVFB_* | CHROMIUM_*) ;;
                    *) continue ;;
                esac
                value=$(printenv "$name" | sed 's/[\\"$`]/\\&/g')
                printf '%s="%s"\n' "$name" "$value"
            done
        ) >"$env_file.new"
        mv "$env_file.new" "$env_file"
        umask 022
        exec /lib/systemd/systemd
        ;;
    *)
        echo "entrypoint: unknown mode '$mode' (supervisord or systemd)" >&2
        exit 2
        ;;
esac
