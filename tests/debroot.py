"""Helpers for the package tests (tests/test_deb.py): build the .deb once per source state, make a
Debian root once, and run dpkg in a copy of it with a recording ``systemctl``.

Heavy (a .deb build with PyPI downloads, a debootstrap from Debian's archive): the tests run only
with ``DRAINER_PACKAGE_TESTS=1``, as root, with the tools installed. ``.ci/run`` sets that up.
Builds and the root are cached under the temporary directory, keyed by the sources' digest, behind a
file lock, so parallel pytest workers build once and reuse.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "packaging_fixtures" / "systemctl-stub"
CACHE = Path(tempfile.gettempdir()) / "drainer-package-tests"
MIRROR = os.environ.get("DRAINER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
TOOLS = ("dpkg-buildpackage", "dh", "debootstrap", "lintian", "chroot")
# What the package is built from (build.sh copies the same).
SOURCES = ("pyproject.toml", "README.md", "config.example.toml", "drainer", "hooks", "packaging")
# Calls that change something; is-enabled / is-active are the questions deb-systemd-invoke asks.
ACTIONS = {"preset", "enable", "disable", "daemon-reload", "start", "stop", "restart", "try-restart"}


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def enabled() -> tuple[bool, str]:
    """Whether the heavy package tests can run here, and why not."""
    if os.environ.get("DRAINER_PACKAGE_TESTS") != "1":
        return False, "package tests are heavy: set DRAINER_PACKAGE_TESTS=1 (.ci/run does)"
    if os.geteuid() != 0:
        return False, "package tests need root (dpkg in a chroot)"
    missing = missing_tools()
    if missing:
        return (
            False,
            f"package tests need {', '.join(missing)} (apt-get install debhelper debootstrap lintian)",
        )
    return True, ""


@contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def source_digest() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def build(out: Path) -> Path:
    """Run packaging/deb/build.sh into ``out``. Raises AssertionError with the build's output."""
    done = subprocess.run(
        [str(ROOT / "packaging" / "deb" / "build.sh"), str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


def built_deb() -> Path:
    """The .deb of the current sources, built once."""
    out = CACHE / f"deb-{source_digest()}"
    with _locked("build"):
        debs = sorted(out.glob("drainer_*.deb"))
        if debs:
            return debs[0]
        return build(out)


def base_root() -> Path:
    """A minimal Debian root with python3 (debootstrap), made once."""
    root = CACHE / f"root-{SUITE}"
    with _locked("root"):
        if (root / ".complete").exists():
            return root
        shutil.rmtree(root, ignore_errors=True)
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(root), MIRROR],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (root / ".complete").touch()
        return root


class DebianRoot:
    """A throw-away copy of the base root where "systemd runs" (/run/systemd/system exists) and
    ``systemctl`` is the recording stub; deb-systemd-helper and deb-systemd-invoke are Debian's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        subprocess.run(["cp", "-a", str(base_root()), str(path)], check=True)
        shutil.copy(STUB, path / "usr/bin/systemctl")
        (path / "usr/bin/systemctl").chmod(0o755)
        (path / "run/systemd/system").mkdir(parents=True, exist_ok=True)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive"]
        return subprocess.run(
            ["chroot", str(self.path), *env, *argv], capture_output=True, text=True, check=False, timeout=300
        )

    def dpkg(self, *argv: str) -> None:
        done = self.run("dpkg", *argv)
        assert done.returncode == 0, done.stdout + done.stderr

    def put(self, deb: Path) -> str:
        shutil.copy(deb, self.path / "tmp" / deb.name)
        return f"/tmp/{deb.name}"

    def calls(self) -> list[str]:
        """The state-changing systemctl calls since the last call of calls(), flags left out."""
        log = self.path / "var/log/systemctl.calls"
        lines = log.read_text().splitlines() if log.exists() else []
        log.write_text("")
        kept = []
        for line in lines:
            words = [w for w in line.split() if not w.startswith("-")]
            if words and words[0] in ACTIONS:
                kept.append(" ".join(words))
        return kept

    def active(self) -> set[str]:
        state = self.path / "run/systemctl-stub"
        return {p.name for p in state.iterdir()} if state.exists() else set()

    def wants(self) -> set[str]:
        return {p.name for p in (self.path / "etc/systemd/system").glob("*.wants/drainer*")}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def bump_version(deb: Path, version: str, out: Path) -> Path:
    """The same package as version ``version``, with a changed unit file (what an upgrade ships)."""
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    lines = [
        f"Version: {version}" if ln.startswith("Version:") else ln for ln in control.read_text().splitlines()
    ]
    control.write_text("\n".join(lines) + "\n")
    unit = tree / "lib/systemd/system/drainer.service"
    unit.write_text(unit.read_text() + f"# upgraded to {version}\n")
    sums = tree / "DEBIAN" / "md5sums"
    rel = "lib/systemd/system/drainer.service"
    fresh = hashlib.md5(unit.read_bytes()).hexdigest()  # dpkg md5sums format
    sums.write_text(
        "".join(
            f"{fresh}  {rel}\n" if ln.endswith(f"  {rel}") else ln + "\n"
            for ln in sums.read_text().splitlines()
        )
    )
    target = out / f"drainer_{version}_{deb.name.rsplit('_', 1)[1]}"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(tree), str(target)], check=True, capture_output=True
    )
    return target
