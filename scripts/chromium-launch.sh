#!/bin/sh
# Start Chromium for the stack (run by supervisord's `chromium` program or systemd's
# browser-agent-chromium.service, already as the unprivileged browser user):
#   1. wait, bounded, until the X server answers;
#   2. clear the profile's Singleton* locks left behind by a crash or a kill;
#   3. load every unpacked extension under $AGENT_EXTENSIONS_DIR (one directory each,
#      with a manifest.json), so adding one and restarting this program is enough;
#   4. turn motion down (CHROMIUM_REDUCED_MOTION, on by default);
#   5. exec Chromium, DevTools on loopback, with $CHROMIUM_FLAGS last (they win).
set -eu

# stack-env.sh beside this file: `make run` may run a copy of both from a directory the
# browser user can read (see STACK_LAUNCHERS).
# shellcheck source=scripts/stack-env.sh
. "$(dirname "$0")/stack-env.sh"

log() { echo "chromium-launch: $*"; }

# The browser never sees the daemon's secrets, and gets the usual identity variables
# (supervisord changes the user, not the environment).
unset AGENT_API_TOKEN AGENT_API_TOKENS AGENT_API_TOKEN_FILE AGENT_API_TOKENS_FILE
me=$(id -un)
home=$(getent passwd "$me" | cut -d: -f6)
export HOME="${home:-$HOME}" USER="$me" LOGNAME="$me" DISPLAY="$AGENT_DISPLAY"

# 1. X must answer before Chromium starts, or it exits at once ("Missing X server").
tries=$((CHROMIUM_X_WAIT * 10))
until xdpyinfo -display "$DISPLAY" >/dev/null 2>&1; do
    tries=$((tries - 1))
    if [ "$tries" -le 0 ]; then
        log "X display $DISPLAY did not answer within ${CHROMIUM_X_WAIT}s"
        exit 1
    fi
    sleep 0.1
done

# 2. A live Chromium on this profile keeps its lock; a dead one's lock goes.
mkdir -p "$CHROMIUM_PROFILE_DIR"
lock="$CHROMIUM_PROFILE_DIR/SingletonLock"
if [ -L "$lock" ]; then
    owner=$(readlink "$lock" || true)          # "<hostname>-<pid>"
    pid=${owner##*-}
    if [ "${owner%-*}" = "$(uname -n)" ] && [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] \
        && grep -qi chrom "/proc/$pid/comm"; then
        log "profile $CHROMIUM_PROFILE_DIR is in use by Chromium pid $pid"
        exit 1
    fi
    log "clearing stale profile lock ($owner)"
fi
rm -f "$lock" "$CHROMIUM_PROFILE_DIR/SingletonSocket" "$CHROMIUM_PROFILE_DIR/SingletonCookie"
# After a kill the profile says it crashed: no "restore pages?" prompt over the page.
prefs="$CHROMIUM_PROFILE_DIR/Default/Preferences"
if [ -f "$prefs" ]; then
    sed -i 's/"exit_type":"Crashed"/"exit_type":"Normal"/; s/"exited_cleanly":false/"exited_cleanly":true/' \
        "$prefs" || true
fi

# 3. Unpacked extensions.
extensions=""
if [ -d "$AGENT_EXTENSIONS_DIR" ]; then
    for dir in "$AGENT_EXTENSIONS_DIR"/*/; do
        [ -f "${dir}manifest.json" ] || continue
        extensions="${extensions:+$extensions,}${dir%/}"
    done
fi

# 4. Reduced motion: GTK's gtk-enable-animations=false, from a settings.ini in a directory
# put first in XDG_CONFIG_DIRS (the user's own ~/.config/gtk-3.0/settings.ini still wins).
# Chromium reads it as the system's "reduce motion": the tab's loading throbber stops as
# soon as a page is drawn instead of running on ~220 ms, which delayed every
# settle-waiting screenshot (the link status bubble still fades out); pages see
# `prefers-reduced-motion: reduce`, as with Playwright's reducedMotion option.
case $CHROMIUM_REDUCED_MOTION in
    on | 1 | true | yes)
        xdg="$CHROMIUM_PROFILE_DIR/StackXdg"
        mkdir -p "$xdg/gtk-3.0"
        printf '[Settings]\ngtk-enable-animations=false\n' >"$xdg/gtk-3.0/settings.ini"
        export XDG_CONFIG_DIRS="$xdg:${XDG_CONFIG_DIRS:-/etc/xdg}"
        ;;
    *) rm -rf "$CHROMIUM_PROFILE_DIR/StackXdg" ;;
esac

# 5. The command line.
if [ -z "$CHROMIUM_BIN" ]; then
    for candidate in /usr/lib/chromium/chromium chromium chromium-browser google-chrome; do
        if command -v "$candidate" >/dev/null 2>&1; then CHROMIUM_BIN=$candidate; break; fi
    done
fi
if [ -z "$CHROMIUM_BIN" ]; then
    log "no Chromium found; set CHROMIUM_BIN"
    exit 1
fi

# The screen's current size (PATCH /display may have changed it), else the configured one.
size=$(xdpyinfo -display "$DISPLAY" 2>/dev/null | awk '/dimensions:/ { print $2; exit }')
[ -n "$size" ] || size=${XVFB_SCREEN%x*}       # 1920x1080x24 -> 1920x1080
cdp_host=${AGENT_CDP_ADDRESS%:*}
cdp_port=${AGENT_CDP_ADDRESS##*:}
features=Translate,MediaRouter,DisableLoadExtensionCommandLineSwitch

set -- \
    --user-data-dir="$CHROMIUM_PROFILE_DIR" \
    --remote-debugging-address="$cdp_host" \
    --remote-debugging-port="$cdp_port" \
    --ozone-platform=x11 \
    --window-position=0,0 \
    --window-size="${size%x*},${size#*x}" \
    --start-maximized \
    --no-first-run \
    --no-default-browser-check \
    --disable-background-networking \
    --disable-component-update \
    --disable-sync \
    --disable-default-apps \
    --disable-features="$features" \
    --disable-session-crashed-bubble \
    --hide-crash-restore-bubble \
    --noerrdialogs \
    --password-store=basic

# The sandbox needs user namespaces (Debian's Chromium has no setuid helper) in which it
# may chroot (CAP_SYS_CHROOT in the container's bounding set). As root, or where the
# container forbids either, it cannot start with it.
case $CHROMIUM_SANDBOX in
    on | 1 | true | yes) sandbox=on ;;
    off | 0 | false | no) sandbox=off ;;
    *)
        if [ "$(id -u)" != 0 ] && unshare --user --map-root-user --pid --net --fork \
                chroot / true >/dev/null 2>&1; then
            sandbox=on
        else
            sandbox=off
        fi
        ;;
esac
if [ "$sandbox" = off ]; then
    set -- "$@" --no-sandbox
    log "sandbox off (running as $me)"
fi

# A small /dev/shm (64 MB in containers by default) crashes renderers; use /tmp then.
shm_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -z "$shm_kb" ] || [ "$shm_kb" -lt 1048576 ]; then
    set -- "$@" --disable-dev-shm-usage
fi

if [ -n "$extensions" ]; then
    set -- "$@" --load-extension="$extensions"
fi

# Extra flags last, split on blanks, never globbed.
set -f
# shellcheck disable=SC2086
set -- "$@" $CHROMIUM_FLAGS
set +f

log "exec $CHROMIUM_BIN $* $CHROMIUM_START_URL"
exec "$CHROMIUM_BIN" "$@" "$CHROMIUM_START_URL"
