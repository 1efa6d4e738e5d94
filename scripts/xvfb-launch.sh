#!/bin/sh
# Start Xvfb on $AGENT_DISPLAY at $XVFB_SCREEN (run by supervisord's `xvfb` program or
# systemd's browser-agent-xvfb.service). A lock file left by a server that is gone (a
# crash, a container restarted with the same /tmp, its pid now someone else's) is
# removed; a display held by a live X server is an error, never taken over.
set -eu

STACK_HOME=${STACK_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
# shellcheck source=scripts/stack-env.sh
. "$STACK_HOME/scripts/stack-env.sh"

number=${AGENT_DISPLAY#*:}
number=${number%%.*}
lock="/tmp/.X$number-lock"
if [ -e "$lock" ]; then
    pid=$(tr -dc 0-9 <"$lock" || true)
    if [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && grep -qE '^(X|Xvfb|Xorg|Xwayland|Xvnc)' "/proc/$pid/comm"; then
        echo "xvfb-launch: display $AGENT_DISPLAY is already served by pid $pid" >&2
        exit 1
    fi
    echo "xvfb-launch: removing stale $lock (pid ${pid:-?} is gone)"
    rm -f "$lock" "/tmp/.X11-unix/X$number"
fi

set -f
# shellcheck disable=SC2086
exec Xvfb "$AGENT_DISPLAY" -screen 0 "$XVFB_SCREEN" -nolisten tcp -noreset $XVFB_ARGS
