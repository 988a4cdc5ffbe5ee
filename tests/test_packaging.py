"""Build artefacts: the .deb builds and installs into a scratch root, the systemd units verify, the
Task Scheduler XML and the role definition parse and say what they must."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGING = ROOT / "packaging"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path: Path) -> None:
    drainer = shutil.which("drainer") or str(Path(__import__("sys").executable).with_name("drainer"))
    units = []
    for unit in sorted((PACKAGING / "systemd").iterdir()):
        # The only change: ExecStart points at an executable that exists on this machine.
        text = unit.read_text().replace("/opt/drainer/bin/drainer", drainer)
        (tmp_path / unit.name).write_text(text)
        units.append(str(tmp_path / unit.name))
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    service = (PACKAGING / "systemd" / "drainer.service").read_text()
    assert "Restart=always" in service
    assert "ConditionPathExists=!/etc/drainer/disabled" in service
    check = (PACKAGING / "systemd" / "drainer-check.service").read_text()
    assert "Type=oneshot" in check and "SuccessExitStatus=3" in check


def test_task_scheduler_xml_parses_and_runs_check_every_minute() -> None:
    tree = ET.parse(PACKAGING / "windows" / "drainer-task.xml")
    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    intervals = [e.text for e in tree.getroot().iterfind(".//t:Repetition/t:Interval", ns)]
    assert intervals and all(i == "PT1M" for i in intervals)
    assert tree.getroot().findtext(".//t:MultipleInstancesPolicy", namespaces=ns) == "IgnoreNew"
    arguments = tree.getroot().findtext(".//t:Exec/t:Arguments", namespaces=ns) or ""
    assert arguments.endswith("check")
    install = (PACKAGING / "windows" / "install.ps1").read_text()
    assert "New-EventLog" in install and "Register-ScheduledTask" in install


def test_role_definition_has_what_each_method_needs() -> None:
    role = json.loads((PACKAGING / "azure" / "drainer-role.json").read_text())
    actions = set(role["Actions"])
    nic = {
        "Microsoft.Network/networkInterfaces/read",
        "Microsoft.Network/networkInterfaces/write",
        "Microsoft.Network/loadBalancers/read",
        "Microsoft.Network/loadBalancers/backendAddressPools/join/action",
        "Microsoft.Network/virtualNetworks/subnets/join/action",
    }
    admin_state = {
        "Microsoft.Network/loadBalancers/read",
        "Microsoft.Network/loadBalancers/backendAddressPools/write",
    }
    assert nic <= actions
    assert admin_state <= actions
    assert not any(a.endswith("/*") or a == "*" for a in actions)  # least privilege: no wildcards
    assert role["DataActions"] == []


def test_cron_and_cloud_init_files() -> None:
    cron = (PACKAGING / "cron" / "drainer").read_text()
    line = next(ln for ln in cron.splitlines() if ln.startswith("* * * * *"))
    assert "/etc/drainer/disabled" in line and "drainer check" in line
    cloud = (PACKAGING / "cloud-init" / "drainer.yaml").read_text()
    assert cloud.startswith("#cloud-config")
    assert "systemctl, enable, --now, drainer.service" in cloud


@pytest.mark.skipif(
    shutil.which("dpkg-deb") is None or not Path("/usr/bin/python3").exists(),
    reason="needs dpkg-deb and Debian's python3",
)
def test_deb_builds_and_installs_into_a_scratch_root(tmp_path: Path) -> None:
    build = subprocess.run(
        [str(PACKAGING / "deb" / "build.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    deb = Path(build.stdout.strip().splitlines()[-1])
    contents = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    for path in (
        "./opt/drainer/bin/drainer",
        "./etc/drainer/config.toml",
        "./lib/systemd/system/drainer.service",
        "./lib/systemd/system/drainer-check.timer",
        "./usr/share/drainer/hooks/log-syslog.sh",
        "./var/lib/drainer/",
        "./etc/drainer/hooks.d/pre-drain/",
    ):
        assert path in contents, path
    conffiles = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    assert b"conffiles" in conffiles
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    install = subprocess.run(
        [
            "dpkg",
            f"--instdir={root}",
            f"--admindir={root}/var/lib/dpkg",
            "--force-depends",
            "--force-script-chrootless",
            "--force-not-root",
            "-i",
            str(deb),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (root / "etc/drainer/config.toml").is_file()
    assert (root / "var/lib/drainer").stat().st_mode & 0o777 == 0o750
    shebang = (root / "opt/drainer/bin/drainer").read_text().splitlines()[0]
    assert shebang == "#!/opt/drainer/bin/python"  # relocated from the build directory
    version = subprocess.run(
        [str(root / "opt/drainer/bin/python"), "-m", "drainer", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("drainer ")
    config = subprocess.run(
        [
            str(root / "opt/drainer/bin/python"),
            "-m",
            "drainer",
            "--config",
            str(root / "etc/drainer/config.toml"),
            "config",
            "check",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert config.returncode == 0, config.stderr
