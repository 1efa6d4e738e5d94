#!/bin/sh
# Make the `debian:bookworm-slim` base image locally when no registry can be reached:
# debootstrap a minimal Debian 12 and import it into podman under the name the
# Dockerfile's FROM uses, so the Dockerfile stays the standard one. Does nothing when
# the image already exists (delete it, or set REBUILD_BASE=1, to make it again).
#
#   BASE_IMAGE      name to tag (default debian:bookworm-slim)
#   DEBIAN_MIRROR   Debian mirror (default: the host's bookworm mirror, else deb.debian.org)
#   SECURITY_MIRROR Debian security mirror (default: the host's, else deb.debian.org)
set -eu

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}

if [ "${REBUILD_BASE:-0}" != 1 ] && podman image exists "$BASE_IMAGE"; then
    echo "build-base: $BASE_IMAGE exists, kept"
    exit 0
fi

# The mirror serving a suite on this host, from deb822 .sources files or sources.list.
host_mirror() {
    suite=$1
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v suite="$suite" '
            /^[[:space:]]*$/ { if (uri != "" && hit) { print uri; exit } uri = ""; hit = 0; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
            END { if (uri != "" && hit) print uri }
        ' "$f" | head -n 1
    done
    if [ -r /etc/apt/sources.list ]; then
        awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list
    fi
}

mirror=${DEBIAN_MIRROR:-$(host_mirror bookworm | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-$(host_mirror bookworm-security | head -n 1)}
security=${security:-http://deb.debian.org/debian-security}

root=$(mktemp -d /var/tmp/bookworm-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT INT TERM

echo "build-base: debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 30 "$root.log" >&2
    rm -f "$root.log"
    exit 1
}
rm -f "$root.log"

# What the official slim image does: the full suite list, no docs or man pages,
# no leftover package caches.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
DPKG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
find "$root/usr/share/doc" -mindepth 2 ! -name copyright -type f -delete 2>/dev/null || true
rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/locale/"* \
    "$root/var/cache/apt/"*.bin "$root/var/cache/apt/archives/"*.deb \
    "$root/var/lib/apt/lists/"* "$root/var/log/"*.log "$root/var/log/apt/"*
: >"$root/etc/machine-id" 2>/dev/null || true

tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
echo "build-base: imported $BASE_IMAGE"
