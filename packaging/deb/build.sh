#!/usr/bin/env bash
# Builds the Debian package with the standard tooling (dpkg-buildpackage, debhelper 13):
#   packaging/deb/build.sh [OUT_DIR]     prints the path of the .deb it built
# Result: OUT_DIR/drainer_<version>-<revision>_<arch>.deb (default OUT_DIR: dist/), with
#   /opt/drainer            a virtual environment: drainer and its pinned, hashed dependencies
#   /usr/bin/drainer        -> /opt/drainer/bin/drainer
#   /etc/drainer/           config.toml (a conffile) and hooks.d/<phase>/
#   /lib/systemd/system     drainer.service (enabled) with drainer-probe.socket and
#                           drainer-metrics.socket (enabled), drainer-check.service + .timer
#   /usr/share/drainer      example hooks, the cron.d file, the Azure roles, the cloud-init snippet
# Needs: debhelper, dpkg-dev, python3.11-venv, and PyPI (pip downloads the locked wheels).
# The source tree is copied first, so the checkout is never written to.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/dist}

version=$(dpkg-parsechangelog -l "$here/debian/changelog" -S Version)
upstream=${version%-*}
declared=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml")
if [ "$upstream" != "$declared" ]; then
    echo "build.sh: debian/changelog says $upstream, pyproject.toml says $declared; add a changelog entry (dch -v $declared-1)" >&2
    exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
src=$stage/drainer-$upstream
mkdir -p "$src"
# Only what the package is built from (no .venv, caches or build output).
cp -r "$root/pyproject.toml" "$root/README.md" "$root/config.example.toml" "$root/drainer" \
    "$root/hooks" "$root/packaging" "$src/"
find "$src" -depth -type d \( -name __pycache__ -o -name '*.egg-info' \) -exec rm -rf {} +
cp -r "$here/debian" "$src/debian"

# The changelog's date, not the clock: two builds of one version produce the same bytes.
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Timestamp)
export SOURCE_DATE_EPOCH
(cd "$src" && dpkg-buildpackage --build=binary --no-sign >"$stage/build.log" 2>&1) || {
    tail -n 40 "$stage/build.log" >&2
    exit 1
}
arch=$(dpkg --print-architecture)
deb=drainer_${version}_${arch}.deb
mkdir -p "$out"
cp "$stage/$deb" "$out/$deb"
echo "$out/$deb"
