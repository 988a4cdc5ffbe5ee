"""The .deb as Debian's tooling builds it (packaging/deb/build.sh): lintian, its contents, and its
life in a real Debian root made by debootstrap: install, upgrade, remove, purge.

systemd cannot run in the root, so ``systemctl`` there is a recording stub
(tests/packaging_fixtures/systemctl-stub); the maintainer scripts, deb-systemd-helper and
deb-systemd-invoke are the real ones and take their usual decisions. Each path prints the
systemctl calls it made. Heavy: see tests/debroot.py for how to run them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import debroot

SOCKETS = ("drainer-metrics.socket", "drainer-probe.socket")

_ok, _why = debroot.enabled()
pytestmark = pytest.mark.skipif(not _ok, reason=_why)


@pytest.fixture
def deb() -> Path:
    return debroot.built_deb()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[debroot.DebianRoot]:
    made = debroot.DebianRoot(tmp_path / "root")
    yield made
    made.remove()


def _show(path: str, calls: list[str]) -> list[str]:
    print(f"systemctl calls on {path}: {calls}")
    return calls


def test_lintian_is_clean(deb: Path) -> None:
    done = subprocess.run(
        ["lintian", "--fail-on", "error,warning,info,pedantic", "--display-level", ">=pedantic", str(deb)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    print(done.stdout)
    # Every tag, info and pedantic included, is fixed or overridden with its reason
    # (debian/drainer.lintian-overrides; tests/test_packaging.py checks each has one).
    tags = [ln for ln in done.stdout.splitlines() if ln[:2] in ("E:", "W:", "I:", "P:")]
    assert done.returncode == 0 and tags == [], done.stdout + done.stderr


def test_contents_relocated_and_reproducible_inputs(deb: Path, tmp_path: Path) -> None:
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True, check=True).stdout
    depends = next(ln for ln in info.splitlines() if ln.strip().startswith("Depends:"))
    assert "python3.11" in depends and "libc6" in depends  # the interpreter and what dh_shlibdeps found
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    assert (tree / "DEBIAN/conffiles").read_text().split() == ["/etc/drainer/config.toml"]
    venv = tree / "opt/drainer"
    assert (venv / "bin/drainer").read_text().splitlines()[0] == "#!/opt/drainer/bin/python"
    assert (venv / "bin/python3.11").readlink() == Path("/usr/bin/python3.11")
    assert not (venv / "bin/pip").exists()  # nothing installs into the venv after the build
    assert not list(venv.rglob("__pycache__")) and not list(venv.rglob("direct_url.json"))
    # No path of the build tree is left in any file (it would break the venv and reproducibility).
    leaked = subprocess.run(
        ["grep", "-rlF", "debian/drainer/opt", str(venv)], capture_output=True, text=True, check=False
    ).stdout
    assert leaked == ""
    for name in ("drainer.service", *SOCKETS, "drainer-check.service", "drainer-check.timer"):
        assert (tree / "lib/systemd/system" / name).is_file()
    assert (tree / "usr/share/drainer/cron.d-drainer").is_file()
    # The cloud-init snippet names the package this build produced.
    assert deb.name in (tree / "usr/share/drainer/cloud-init.yaml").read_text()
    assert (tree / "usr/share/drainer/azure/drainer-role-nic.json").is_file()
    assert (tree / "usr/share/drainer/azure/drainer-role-admin-state.json").is_file()


def test_install_upgrade_remove_purge(deb: Path, root: debroot.DebianRoot, tmp_path: Path) -> None:
    # Install: the sockets that hold the daemon's ports enabled and started first, then
    # drainer.service enabled (preset) and started on them; the timer is the alternative, left off.
    root.dpkg("-i", root.put(deb))
    calls = _show("install", root.calls())
    assert calls == [
        "preset drainer-metrics.socket",
        "preset drainer-probe.socket",
        "daemon-reload",
        "start drainer-metrics.socket drainer-probe.socket",
        "preset drainer.service",
        "daemon-reload",
        "start drainer.service",
        "daemon-reload",
    ]
    assert root.active() == {"drainer.service", *SOCKETS}
    assert root.wants() == {"drainer.service", *SOCKETS}
    assert {p.name for p in (root.path / "etc/systemd/system/sockets.target.wants").iterdir()} == set(SOCKETS)
    assert (root.path / "var/lib/drainer").stat().st_mode & 0o777 == 0o750
    assert (root.path / "var/lib/drainer-record").stat().st_mode & 0o777 == 0o700  # the record key's
    for argv in (("drainer", "--version"), ("drainer", "config", "check")):
        done = root.run(*argv)
        assert done.returncode == 0, done.stdout + done.stderr
    assert list((root.path / "opt/drainer").rglob("__pycache__")), "postinst byte-compiles the venv"

    # Upgrade: the running daemon is restarted, never stopped; the sockets are neither stopped nor
    # restarted (they hold the ports meanwhile), only started if they were not listening (a no-op
    # for systemd when they are); the operator's config is kept.
    config = root.path / "etc/drainer/config.toml"
    config.write_text(config.read_text() + "\n# the operator's change\n")
    newer = debroot.bump_version(deb, "0.1.0-2", tmp_path)
    root.dpkg("-i", root.put(newer))
    calls = _show("upgrade", root.calls())
    assert calls == [
        "daemon-reload",
        "start drainer-metrics.socket drainer-probe.socket",
        "daemon-reload",
        "restart drainer.service",
        "daemon-reload",
    ]
    assert not any(c.startswith("stop") for c in calls)
    assert root.active() == {"drainer.service", *SOCKETS}
    assert config.read_text().endswith("# the operator's change\n")
    assert "upgraded to 0.1.0-2" in (root.path / "lib/systemd/system/drainer.service").read_text()
    done = root.run("drainer", "config", "check")
    assert done.returncode == 0, done.stdout + done.stderr

    # Remove: every unit stopped; config, state and the enablement stay until purge.
    root.dpkg("-r", "drainer")
    calls = _show("remove", root.calls())
    assert calls == [
        "stop drainer-check.timer",
        "stop drainer-check.service drainer.service",
        "stop drainer-metrics.socket drainer-probe.socket",  # the daemon first, then its ports
        "daemon-reload",
        "daemon-reload",
        "daemon-reload",
    ]
    assert root.active() == set()
    assert not (root.path / "opt/drainer").exists()  # the byte-code caches went too
    assert config.is_file() and (root.path / "var/lib/drainer").is_dir()

    # Purge: the config, the state directory and the unit symlinks are gone.
    root.dpkg("-P", "drainer")
    calls = _show("purge", root.calls())
    # deb-systemd-helper purge, after removing the links: of the sockets, of drainer.service.
    assert calls == ["daemon-reload", "daemon-reload"]
    assert root.wants() == set()
    assert not (root.path / "etc/drainer/config.toml").exists()
    assert not (root.path / "var/lib/drainer").exists()
    assert not (root.path / "var/lib/drainer-record").exists()


def test_upgrade_keeps_the_operators_choice_of_timer(
    deb: Path, root: debroot.DebianRoot, tmp_path: Path
) -> None:
    root.dpkg("-i", root.put(deb))
    # The operator runs the one-shot timer instead of the daemon (and its sockets, which would
    # start the daemon on a connection).
    for argv in (
        ("systemctl", "disable", "drainer.service", *SOCKETS),
        ("systemctl", "stop", "drainer.service", *SOCKETS),
        ("systemctl", "enable", "drainer-check.timer"),
        ("systemctl", "start", "drainer-check.timer"),
    ):
        assert root.run(*argv).returncode == 0
    root.calls()
    root.dpkg("-i", root.put(debroot.bump_version(deb, "0.1.0-2", tmp_path)))
    calls = _show("upgrade with the timer chosen", root.calls())
    assert calls == ["daemon-reload", "daemon-reload", "daemon-reload", "restart drainer-check.timer"]
    assert root.active() == {"drainer-check.timer"}
    assert root.wants() == {"drainer-check.timer"}
    root.dpkg("-r", "drainer")
    assert root.active() == set()


def test_two_builds_are_identical(tmp_path: Path) -> None:
    # Built before asking for the cached package, so that the two builds can run side by side.
    again = debroot.build(tmp_path / "again")
    deb = debroot.built_deb()
    assert again.name == deb.name
    assert again.read_bytes() == deb.read_bytes(), "two builds of the same sources differ"
