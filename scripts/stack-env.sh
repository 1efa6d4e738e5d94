# shellcheck shell=sh
# Defaults for every setting of the packaged stack (Xvfb, Chromium, the daemon), in one
# place. Sourced by the launchers, by the container entry point and by `make run`, so
# supervisord (whose config expands %(ENV_X)s and fails on an unset X) and systemd see
# the same values. A variable already set in the environment always wins.
#
# Settings shared with the daemon (it reads them too):
#   AGENT_DISPLAY            X display of Xvfb, Chromium and the daemon      (:1)
#   AGENT_CDP_ADDRESS        Chromium's own DevTools host:port, loopback    (127.0.0.1:9223)
#   AGENT_DEFAULT_USER       unprivileged user Chromium runs as             (browser; as non-root: you)
#   AGENT_EXTENSIONS_DIR     unpacked extensions Chromium loads             (~user/extensions)
#   AGENT_SUPERVISOR_SOCKET  supervisord's XML-RPC unix socket              (/run/browser-agent/supervisor.sock)
# Settings of the stack only:
#   STACK_HOME               where scripts/ and supervisor/ are installed    (/opt/browser-agent)
#   STACK_AGENT_BIN          the daemon's executable                        ($STACK_HOME/venv/bin/browser-agent)
#   STACK_LAUNCHERS          where Chromium's launcher runs from, as the browser user
#                                                                           ($STACK_HOME/scripts)
#   STACK_LOG_DIR            supervisord's and every program's log files    (/var/log/browser-agent)
#   XVFB_SCREEN              screen size and depth                          (1920x1080x24)
#   XVFB_ARGS                extra Xvfb arguments, split on blanks          ()
#   CHROMIUM_BIN             Chromium's executable                          (Debian's /usr/lib/chromium/chromium, else from PATH)
#   CHROMIUM_PROFILE_DIR     Chromium's user data directory                 (~user/.config/chromium)
#   CHROMIUM_FLAGS           extra Chromium flags, split on blanks, last    ()
#   CHROMIUM_SANDBOX         auto, on or off (auto: on when the user may make namespaces)
#   CHROMIUM_START_URL       the page Chromium opens                        (about:blank)
#   CHROMIUM_REDUCED_MOTION  on or off: GTK's reduced motion for Chromium (its loading
#                            throbber stops with the page; pages see
#                            prefers-reduced-motion: reduce)                (on)
#   CHROMIUM_X_WAIT          seconds Chromium's launcher waits for X        (30)

: "${STACK_HOME:=/opt/browser-agent}"
: "${STACK_AGENT_BIN:=$STACK_HOME/venv/bin/browser-agent}"
: "${STACK_LAUNCHERS:=$STACK_HOME/scripts}"
: "${STACK_LOG_DIR:=/var/log/browser-agent}"
: "${AGENT_DISPLAY:=:1}"
: "${AGENT_CDP_ADDRESS:=127.0.0.1:9223}"
: "${AGENT_SUPERVISOR_SOCKET:=/run/browser-agent/supervisor.sock}"
# supervisord's pid file lives beside its socket; it runs as whoever starts it.
STACK_RUN_DIR=$(dirname "$AGENT_SUPERVISOR_SOCKET")
STACK_SUPERVISORD_USER=$(id -un)
if [ -z "${AGENT_DEFAULT_USER:-}" ]; then
    if [ "$(id -u)" = 0 ]; then AGENT_DEFAULT_USER=browser; else AGENT_DEFAULT_USER=$(id -un); fi
fi
# The browser user's home; `getent` answers only once the user exists.
STACK_USER_HOME=$(getent passwd "$AGENT_DEFAULT_USER" 2>/dev/null | cut -d: -f6)
: "${STACK_USER_HOME:=/home/$AGENT_DEFAULT_USER}"
: "${AGENT_EXTENSIONS_DIR:=$STACK_USER_HOME/extensions}"
: "${CHROMIUM_PROFILE_DIR:=$STACK_USER_HOME/.config/chromium}"
: "${XVFB_SCREEN:=1920x1080x24}"
: "${XVFB_ARGS:=}"
: "${CHROMIUM_BIN:=}"
: "${CHROMIUM_FLAGS:=}"
: "${CHROMIUM_SANDBOX:=auto}"
: "${CHROMIUM_START_URL:=about:blank}"
: "${CHROMIUM_REDUCED_MOTION:=on}"
: "${CHROMIUM_X_WAIT:=30}"

export STACK_HOME STACK_AGENT_BIN STACK_LAUNCHERS STACK_LOG_DIR STACK_RUN_DIR STACK_SUPERVISORD_USER STACK_USER_HOME \
    AGENT_DISPLAY AGENT_CDP_ADDRESS AGENT_SUPERVISOR_SOCKET AGENT_DEFAULT_USER \
    AGENT_EXTENSIONS_DIR CHROMIUM_PROFILE_DIR XVFB_SCREEN XVFB_ARGS CHROMIUM_BIN \
    CHROMIUM_FLAGS CHROMIUM_SANDBOX CHROMIUM_START_URL CHROMIUM_REDUCED_MOTION CHROMIUM_X_WAIT

# Directories the stack writes to, owned by who writes them. Needs root when they are
# under /run or /var/log (as in the image and on a VM).
stack_prepare_dirs() {
    mkdir -p "$STACK_LOG_DIR" "$STACK_RUN_DIR"
    if [ ! -d "$AGENT_EXTENSIONS_DIR" ]; then
        mkdir -p "$AGENT_EXTENSIONS_DIR"
        if [ "$(id -u)" = 0 ] && [ "$(id -un)" != "$AGENT_DEFAULT_USER" ]; then
            chown "$AGENT_DEFAULT_USER:" "$AGENT_EXTENSIONS_DIR"
        fi
    fi
}
