#!/usr/bin/env bash
# Installs the Debian packages the stack and its tests need (idempotent: only what is
# missing). Run as root; otherwise it prints the command to run.
set -euo pipefail

packages=(
  # the stack: X server, browser, process supervisor
  xvfb chromium supervisor x11-utils xauth
  fonts-dejavu-core fonts-noto-cjk fonts-noto-color-emoji
  # the daemon's virtual environment
  python3 python3-venv python3-dev
  # tests and benchmarks: baselines and helpers
  xdotool xclip procps shellcheck
  # the daemon records replays with ffmpeg (x11grab, libx264)
  ffmpeg
  # the image test: podman builds and runs the container, debootstrap makes its base;
  # the deployment test: catatonit for kube play's pause container
  podman runc debootstrap systemd catatonit
)

# Node for the Puppeteer test (tests/node): Debian's nodejs 18 + npm 9; a NodeSource
# nodejs already bundles npm (and conflicts with Debian's npm package).
packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
