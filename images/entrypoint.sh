#!/bin/sh
# The image's entry point: `entrypoint.sh supervisord` (the default) or `entrypoint.sh
# systemd`. It settles the API token, prepares the directories, then execs the process
# manager as PID 1 (so `docker stop` reaches it directly).
#
# Security default: with no token given (AGENT_API_TOKEN, AGENT_API_TOKENS or their
# _FILE twins), and AGENT_ALLOW_UNAUTHENTICATED not set to a true value, a random admin
# token is made at the first start, printed once in the log, and kept (mode 0600) for
# later restarts.
#
# Tokens never stay in an environment: one given as AGENT_API_TOKEN(S) is moved into a
# root-only file and only AGENT_API_TOKEN(S)_FILE is passed on, so neither supervisord,
# nor the launchers, nor Chromium (which the browser user's processes can inspect) ever
# hold it.
set -eu

mode=${1:-supervisord}
STACK_HOME=${STACK_HOME:-/opt/browser-agent}
token_file=/var/lib/browser-agent/api-token
secrets_dir=/run/browser-agent/secrets

case $(printf '%s' "${AGENT_ALLOW_UNAUTHENTICATED:-}" | tr '[:upper:]' '[:lower:]') in
    1 | true | yes | on) unauthenticated=1 ;;
    *) unauthenticated=0 ;;
esac

# A secret from the environment into a root-only file; prints the file's path.
secret_to_file() {
    (umask 077 && mkdir -p "$secrets_dir" && printf '%s\n' "$2" >"$secrets_dir/$1")
    printf '%s' "$secrets_dir/$1"
}
if [ -n "${AGENT_API_TOKEN:-}" ]; then
    AGENT_API_TOKEN_FILE=$(secret_to_file api-token "$AGENT_API_TOKEN")
    export AGENT_API_TOKEN_FILE
fi
if [ -n "${AGENT_API_TOKENS:-}" ]; then
    AGENT_API_TOKENS_FILE=$(secret_to_file api-tokens "$AGENT_API_TOKENS")
    export AGENT_API_TOKENS_FILE
fi
unset AGENT_API_TOKEN AGENT_API_TOKENS

if [ -z "${AGENT_API_TOKEN_FILE:-}" ] && [ -z "${AGENT_API_TOKENS_FILE:-}" ]; then
    if [ "$unauthenticated" = 1 ]; then
        echo "browser-agent: AGENT_ALLOW_UNAUTHENTICATED is set: the API takes no token (trusted networks only)"
    elif [ -s "$token_file" ]; then
        echo "browser-agent: using the API token made at the first start (printed then; also in $token_file)"
    else
        token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
        mkdir -p "$(dirname "$token_file")"
        (umask 077 && printf '%s\n' "$token" >"$token_file")
        echo "browser-agent: no AGENT_API_TOKEN given; generated one (shown only this once):"
        echo "browser-agent: AGENT_API_TOKEN=$token"
        unset token
    fi
    if [ "$unauthenticated" != 1 ]; then
        AGENT_API_TOKEN_FILE=$token_file
        export AGENT_API_TOKEN_FILE
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
