#!/usr/bin/env bash
# Builds dist/drainer_<version>_<arch>.deb with dpkg-deb:
#   /opt/drainer            a virtual environment with drainer and its dependencies (Debian's python3)
#   /usr/bin/drainer        -> /opt/drainer/bin/drainer
#   /etc/drainer/           config.toml (a conffile) and hooks.d/<phase>/
#   /var/lib/drainer        the state directory (0750)
#   /lib/systemd/system     drainer.service (daemon), drainer-check.service + .timer (one-shot)
#   /usr/share/drainer      example hooks, the cron.d file, the Azure role, the cloud-init snippet
# Usage: packaging/deb/build.sh [OUT_DIR]   (needs dpkg-deb, Debian's python3 with venv, and PyPI)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/dist}
python=${DEB_PYTHON:-/usr/bin/python3}
version=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")
arch=$(dpkg --print-architecture)
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/drainer_${version}_${arch}
venv=$pkg/opt/drainer

mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/usr/share/drainer/hooks" \
    "$pkg/usr/share/doc/drainer" "$pkg/var/lib/drainer"
for phase in on-event pre-drain post-drain pre-restore post-restore; do
    mkdir -p "$pkg/etc/drainer/hooks.d/$phase"
done

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile "$root"
# The venv was built under the staging directory: point its scripts at the installed location.
grep -rlI --null "$venv" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 -r sed -i "s|$venv|/opt/drainer|g"
find "$venv" -name '__pycache__' -prune -exec rm -rf {} +
rm -rf "$venv/lib/python$pyver/site-packages/pip" "$venv"/lib/python"$pyver"/site-packages/pip-*.dist-info \
    "$venv/bin/pip" "$venv/bin/pip3" "$venv/bin/pip$pyver"
ln -s /opt/drainer/bin/drainer "$pkg/usr/bin/drainer"

install -m 0644 "$root/packaging/systemd/drainer.service" "$root/packaging/systemd/drainer-check.service" \
    "$root/packaging/systemd/drainer-check.timer" "$pkg/lib/systemd/system/"
install -m 0640 "$root/config.example.toml" "$pkg/etc/drainer/config.toml"
install -m 0644 "$root/config.example.toml" "$root/README.md" "$pkg/usr/share/doc/drainer/"
install -m 0755 "$root"/hooks/*.sh "$pkg/usr/share/drainer/hooks/"
install -m 0644 "$root"/hooks/*.ps1 "$pkg/usr/share/drainer/hooks/"
install -m 0644 "$root/packaging/cron/drainer" "$pkg/usr/share/drainer/cron.d-drainer"
install -m 0644 "$root/packaging/azure/drainer-role.json" "$root/packaging/cloud-init/drainer.yaml" \
    "$pkg/usr/share/drainer/"
chmod 0750 "$pkg/var/lib/drainer"
chmod 0755 "$pkg/etc/drainer" "$pkg/etc/drainer/hooks.d"

installed_size=$(du -sk "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: drainer
Version: $version
Architecture: $arch
Maintainer: drainer maintainers <drainer@localhost>
Installed-Size: $installed_size
Depends: python$pyver, libpython$pyver-stdlib | python$pyver-minimal
Section: admin
Priority: optional
Description: keep Azure VMs out of harm's way during platform maintenance
 drainer reads Azure Scheduled Events from the instance metadata service, takes the VM out of its
 load-balancer pools before maintenance, approves the maintenance early once drained, and puts
 the VM back exactly as it was afterwards.
CONTROL
echo "/etc/drainer/config.toml" > "$pkg/DEBIAN/conffiles"
cat > "$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    echo "drainer: enable the daemon (systemctl enable --now drainer.service) or the timer (drainer-check.timer)"
fi
exit 0
POSTINST
cat > "$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl stop drainer.service drainer-check.timer 2>/dev/null || true
fi
exit 0
PRERM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm"

mkdir -p "$out"
dpkg-deb --root-owner-group --build "$pkg" "$out/drainer_${version}_${arch}.deb" >/dev/null
echo "$out/drainer_${version}_${arch}.deb"
