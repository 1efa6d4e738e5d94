#!/bin/sh
# Build the image with podman: the supervisord variant (default target) and the systemd
# variant, after making the debian:bookworm-slim base locally if it is missing
# (images/build-base.sh). Prints each build's time and the images' sizes.
#
#   IMAGE     name of the supervisord image (default browser-agent:latest);
#             the systemd one is "$IMAGE-systemd" (browser-agent:latest-systemd)
#   TARGETS   which to build (default "supervisord systemd")
#   PODMAN_BUILD_FLAGS  more flags for podman build
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-browser-agent:latest}
TARGETS=${TARGETS:-supervisord systemd}

"$repo/images/build-base.sh"
# Swagger UI for /docs, from the npm lockfile into the package the image installs.
make -C "$repo" --no-print-directory docs-assets

# What works on hosts without a registry or with a restricted sandbox: never pull, host
# network, runc, modest ulimits; the docker format keeps the HEALTHCHECK.
set -- --pull=never --network host --runtime runc --format docker \
    --ulimit nofile=10000:10000 --ulimit nproc=10000:10000 \
    -f "$repo/images/Dockerfile"
# Where outgoing TLS is intercepted, the host's pip trusts a CA bundle: so does the build's.
if [ -n "${PIP_CERT:-}" ] && [ -r "$PIP_CERT" ]; then
    set -- "$@" --volume "$PIP_CERT:/etc/ssl/build-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/build-ca.crt
fi

for target in $TARGETS; do
    case $target in
        supervisord) tag=$IMAGE ;;
        systemd) tag=$IMAGE-systemd ;;
        *) echo "build: unknown target $target" >&2; exit 2 ;;
    esac
    start=$(date +%s)
    # shellcheck disable=SC2086
    podman build "$@" ${PODMAN_BUILD_FLAGS:-} --target "$target" -t "$tag" "$repo"
    echo "build: $tag ($target) built in $(( $(date +%s) - start ))s," \
        "$(podman image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
done

# Earlier builds' untagged images hold disk space only; the tagged ones keep the cache.
podman image prune -f >/dev/null
