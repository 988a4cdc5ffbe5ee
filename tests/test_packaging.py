"""Packaging artefacts that need no build: the systemd units (verify, sandbox, kill switch, one state
dir), the Debian source (changelog, copyright, locks, lintian overrides), the Azure roles, the
cloud-init snippet, cron and the Windows task. The .deb itself: tests/test_deb.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from drainer.config import MetricsConfig, ProbeConfig, is_loopback, parse_address
from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PACKAGING = ROOT / "packaging"
UNITS = PACKAGING / "systemd"
DEBIAN = PACKAGING / "deb" / "debian"
SERVICES = ("drainer.service", "drainer-check.service")
SOCKETS = ("drainer-probe.socket", "drainer-metrics.socket")
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def _units_here(tmp_path: Path) -> list[str]:
    """The units as `drainer setup systemd` writes them for this installation (ExecStart pointing at
    the drainer that exists on this machine): what a pip install gets, and the .deb's with one path."""
    drainer = str(Path(sys.executable).with_name("drainer"))
    done = subprocess.run(
        [drainer, "setup", "systemd", "--dir", str(tmp_path)], capture_output=True, text=True, check=True
    )
    written = [line.removeprefix("wrote ") for line in done.stdout.splitlines() if line.startswith("wrote ")]
    assert sorted(Path(w).name for w in written) == sorted(u.name for u in UNITS.iterdir())
    return sorted(written)


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@needs_systemd_analyze
def test_systemd_units_verify(tmp_path: Path) -> None:
    # --man=no: the man page named in Documentation= is installed by the package, not here.
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *_units_here(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    # A directive systemd cannot parse is a warning on stderr ("..., ignoring"), not an exit code.
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert _directives("drainer.service")["Restart"] == ["always"]
    check = _directives("drainer-check.service")
    assert check["Type"] == ["oneshot"] and check["SuccessExitStatus"] == ["3"]


@needs_systemd_analyze
@pytest.mark.parametrize("unit", SERVICES)
def test_sandbox_exposure(unit: str, tmp_path: Path) -> None:
    """systemd-analyze security said 9.1 UNSAFE before the sandbox; it must stay at "OK" or better."""
    _units_here(tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert score, done.stdout + done.stderr
    print(f"{unit}: exposure {score.group(1)}")
    assert float(score.group(1)) <= 4.0


@pytest.mark.parametrize("unit", SERVICES)
def test_sandbox_leaves_hooks_what_they_need(unit: str) -> None:
    found = _directives(unit)
    assert found["ProtectSystem"] == ["strict"] and found["PrivateTmp"] == ["yes"]
    assert found["NoNewPrivileges"] == ["yes"] and found["ProtectHome"] == ["read-only"]
    # The state and runtime directories stay writable; so do logs, for tools hooks run, and
    # node_exporter's textfile directory, the example place for [metrics] textfile.
    assert found["StateDirectory"] == ["drainer drainer-record"] and found["RuntimeDirectory"] == ["drainer"]
    assert found["ReadWritePaths"] == ["-/var/log -/var/lib/prometheus/node-exporter"]
    families = found["RestrictAddressFamilies"][0].split()
    # IMDS/ARM/webhooks, syslog and systemctl, ss(8) in the wait-connections example hook.
    assert set(families) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    caps = set(found["CapabilityBoundingSet"][0].split())
    assert {"CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"} <= caps
    assert not caps & {"CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO"}
    assert found["SystemCallFilter"] == ["@system-service"]


def test_socket_units_hold_the_daemons_default_ports() -> None:
    """The ports drainer serves by default, bound by systemd for drainer.service (sd_listen_fds):
    while the daemon is down no local user can take them (tests/test_sockets.py shows the daemon's
    side under systemd-socket-activate)."""
    probe, metrics = _directives("drainer-probe.socket"), _directives("drainer-metrics.socket")
    # The probe on every address of its port, IPv4 and IPv6 through one dual-stack socket.
    assert probe["ListenStream"] == [str(parse_address(ProbeConfig().address)[1])]
    assert probe["BindIPv6Only"] == ["both"]
    assert ProbeConfig().address == "0.0.0.0:8088"  # what the dual-stack socket serves
    assert metrics["ListenStream"] == [MetricsConfig().address]
    assert is_loopback(parse_address(MetricsConfig().address)[0])
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    assert example["probe"]["address"] == ProbeConfig().address
    assert example["metrics"]["address"] == MetricsConfig().address
    for unit, name in (("drainer-probe.socket", "probe"), ("drainer-metrics.socket", "metrics")):
        found = _directives(unit)
        assert found["FileDescriptorName"] == [name], unit  # what drainer run looks for
        assert found["Service"] == ["drainer.service"], unit
        # One listening socket handed to the daemon; nobody else may bind beside it.
        assert found["Accept"] == ["no"] and found["ReusePort"] == ["no"], unit
        assert found["WantedBy"] == ["sockets.target"], unit
    service = _directives("drainer.service")
    # Restarting the daemon starts a socket that is not listening (first upgrade to these units).
    assert set(service["Wants"][-1].split()) == set(SOCKETS)
    assert "Also" not in service  # an Also= would make the package restart the sockets on upgrade


def test_the_package_ships_every_unit_and_never_restarts_the_sockets() -> None:
    shipped = {
        Path(line.split()[0]).name
        for line in (DEBIAN / "drainer.install").read_text().splitlines()
        if line.startswith("packaging/systemd/")
    }
    assert shipped == {unit.name for unit in UNITS.iterdir()}
    rules = (DEBIAN / "rules").read_text()
    calls = re.findall(r"^\tdh_installsystemd (.*)$", rules, re.M)
    # The sockets: their snippets first (started before the daemon on install), enabled, stopped on
    # removal, never stopped or restarted on upgrade (the ports would be free for a moment).
    assert calls[0].split() == ["--no-stop-on-upgrade", *SOCKETS]
    assert all(not set(SOCKETS) & set(call.split()) for call in calls[1:])


def test_units_leave_the_state_dir_to_the_config() -> None:
    """The config's state_dir is the one source: no unit sets DRAINER_* in the environment."""
    for unit in UNITS.iterdir():
        text = unit.read_text()
        assert not re.search(r"^\s*(Environment|EnvironmentFile|PassEnvironment)=", text, re.M), unit.name
        assert "DRAINER_STATE_DIR=" not in text


def test_kill_switch_comes_back_without_a_manual_start() -> None:
    # The daemon always starts (it idles while /etc/drainer/disabled exists): a unit skipped at boot
    # by a condition would stay down after the file is removed.
    assert "ConditionPathExists" not in _directives("drainer.service")
    # The one-shot is skipped while the file exists, but the timer fires on the calendar, so the
    # first minute after the file goes runs a check.
    assert _directives("drainer-check.service")["ConditionPathExists"] == ["!/etc/drainer/disabled"]
    timer = _directives("drainer-check.timer")
    assert timer["OnCalendar"] == ["minutely"] and "OnUnitActiveSec" not in timer
    assert _directives("drainer.service")["WantedBy"] == ["multi-user.target"]


def test_changelog_version_matches_pyproject() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    found = re.match(r"drainer \((?P<upstream>[^-)]+)-(?P<revision>\d+)\) ", first)
    assert found, first
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert found["upstream"] == project["version"]


def _locked(name: str) -> dict[str, str]:
    """name -> version of a pip-compile lock; every requirement must carry a hash."""
    text = (PACKAGING / "deb" / name).read_text()
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z])", text):
        head = block.strip().splitlines()[0] if block.strip() else ""
        pin = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", head)
        if pin:
            assert "--hash=sha256:" in block, f"{pin[1]} is not hashed"
            pins[pin[1].lower().replace("_", "-")] = pin[2]
    return pins


def test_locks_pin_and_hash_every_dependency() -> None:
    pins = _locked("requirements.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name
        markers = requirement.split(";", 1)[1] if ";" in requirement else ""
        if "win32" in markers or "python_version < '3.11'" in markers:
            continue  # not on Debian 12's Python 3.11
        assert name[0].lower().replace("_", "-") in pins, requirement
    assert "setuptools" in _locked("build-requirements.lock")


def test_copyright_names_every_bundled_distribution() -> None:
    text = (DEBIAN / "copyright").read_text()
    assert text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    named = {
        dist
        for line in re.findall(r"^Comment: PyPI distribution\(s\): (.*?)\.(?: |$)", text, re.M)
        for dist in line.split()
    }
    assert set(_locked("requirements.lock")) <= named
    # Every License: short name used by a Files stanza has a stand-alone paragraph.
    used = {
        part.strip()
        for value in re.findall(r"^Files: .*\n(?:.*\n)*?License: (.*)", text, re.M)
        for part in re.split(r" or | and ", value)
    }
    defined = set(re.findall(r"^License: (\S+)\n ", text, re.M))
    assert used <= defined, used - defined


def test_every_lintian_override_says_why() -> None:
    lines = (DEBIAN / "drainer.lintian-overrides").read_text().splitlines()
    overrides = [i for i, line in enumerate(lines) if line.startswith("drainer:")]
    assert overrides
    for i in overrides:
        # An override, or a run of overrides, comes right after the comment that justifies it.
        start = i
        while start > 0 and lines[start - 1].startswith("drainer:"):
            start -= 1
        assert start > 0 and lines[start - 1].startswith("# "), lines[i]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_maintainer_scripts_pass_shellcheck() -> None:
    scripts = [DEBIAN / f"drainer.{name}" for name in ("postinst", "prerm", "postrm")]
    scripts.append(ROOT / "tests" / "packaging_fixtures" / "systemctl-stub")
    done = subprocess.run(
        ["shellcheck", "-s", "sh", *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


ROLE_KEYS = ["Name", "IsCustom", "Description", "Actions", "NotActions", "DataActions", "NotDataActions",
             "AssignableScopes"]  # fmt: skip
# What each method's code calls (drainer/act/lb.py, drainer/io/arm.py), and what ARM checks with it.
ROLES = {
    "drainer-role-nic.json": {
        "Microsoft.Network/networkInterfaces/read",  # list_nics, get_nic
        "Microsoft.Network/networkInterfaces/write",  # put_nic (pool references, tags)
        "Microsoft.Network/loadBalancers/read",  # get_load_balancer
        # linked authorisation of the NIC PUT: every resource the NIC body references
        "Microsoft.Network/loadBalancers/backendAddressPools/join/action",
        "Microsoft.Network/loadBalancers/inboundNatRules/join/action",
        "Microsoft.Network/virtualNetworks/subnets/join/action",
        "Microsoft.Network/networkSecurityGroups/join/action",
        "Microsoft.Network/publicIPAddresses/join/action",
        "Microsoft.Network/applicationSecurityGroups/joinIpConfiguration/action",
        "Microsoft.Network/locations/operations/read",  # the SDK polls the PUT's async operation
        "Microsoft.Compute/virtualMachines/read",  # get_vm_nics: the VM's NICs (networkProfile)
    },
    "drainer-role-admin-state.json": {
        "Microsoft.Network/loadBalancers/read",  # list_load_balancers, get_load_balancer
        "Microsoft.Network/loadBalancers/backendAddressPools/write",  # put_pool
        "Microsoft.Network/virtualNetworks/joinLoadBalancer/action",  # pool addresses link a VNet
        "Microsoft.Network/virtualNetworks/subnets/joinLoadBalancer/action",  # ... or a subnet
        "Microsoft.Network/networkInterfaces/read",  # peers for early approval, NIC discovery
        # the record on the VM's NIC (tags): a NIC PUT, with its linked authorisation, and a
        # restore also reads the nic method's records (the method may have changed while out)
        "Microsoft.Network/networkInterfaces/write",
        "Microsoft.Network/loadBalancers/backendAddressPools/join/action",
        "Microsoft.Network/loadBalancers/inboundNatRules/join/action",
        "Microsoft.Network/virtualNetworks/subnets/join/action",
        "Microsoft.Network/networkSecurityGroups/join/action",
        "Microsoft.Network/publicIPAddresses/join/action",
        "Microsoft.Network/applicationSecurityGroups/joinIpConfiguration/action",
        "Microsoft.Network/locations/operations/read",
        "Microsoft.Compute/virtualMachines/read",  # get_vm_nics
        # a scale-set Uniform instance: its VM resource and its NICs (get_scale_set_nic)
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/read",
    },
    "drainer-role-reader.json": {
        "Microsoft.Network/networkInterfaces/read",
        "Microsoft.Network/loadBalancers/read",
        "Microsoft.Compute/virtualMachines/read",  # early approval: the listed VMs' NICs
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
    },
}


@pytest.mark.parametrize("name", sorted(ROLES))
def test_role_definition_shape(name: str) -> None:
    role = json.loads((PACKAGING / "azure" / name).read_text())
    assert list(role) == ROLE_KEYS
    assert role["IsCustom"] is True and role["Name"].startswith("drainer ")
    actions = role["Actions"]
    assert len(actions) == len(set(actions)) and set(actions) == ROLES[name]
    assert all(re.fullmatch(r"Microsoft\.Network(/[A-Za-z]+)+", a) for a in actions if "Compute" not in a)
    # Compute: reads only (a VM's NICs), never a write to a VM.
    assert all(re.fullmatch(r"Microsoft\.Compute(/[A-Za-z]+)+/read", a) for a in actions if "Compute" in a)
    assert not any("*" in a for a in actions)
    assert role["NotActions"] == role["DataActions"] == role["NotDataActions"] == []
    assert role["AssignableScopes"] and all(s.startswith("/subscriptions/") for s in role["AssignableScopes"])
    # No role may do what the code never does: delete, or write a load balancer as a whole.
    assert not any(a.endswith("/delete") or a == "Microsoft.Network/loadBalancers/write" for a in actions)


def test_cloud_init_installs_then_configures() -> None:
    path = PACKAGING / "cloud-init" / "drainer.yaml"
    text = path.read_text()
    assert text.startswith("#cloud-config\n")
    # Nothing writes /etc/drainer before dpkg installed its conffile.
    assert not re.search(r"^\s*- path: /etc/drainer", text, re.M)
    script = text[text.index("runcmd:") :]
    install = script.index("apt-get install")
    assert script.index("sha256sum -c") < install < script.index("/etc/drainer/config.toml")
    assert "set -eu" in script.splitlines()[2]
    # The sockets enabled for every boot, after the install made them, before the daemon restarts
    # on them (not --now: systemd refuses to start a socket while its service runs).
    enable = script.index(f"systemctl enable {' '.join(SOCKETS)}\n")
    assert install < enable < script.index("systemctl restart drainer.service")
    assert not re.search(r"^\s*systemctl .*--now", script, re.M)
    # The name of the package build.sh produces: drainer_<changelog version>_<arch>.deb.
    version = re.match(r"drainer \(([^)]+)\)", (DEBIAN / "changelog").read_text())
    assert version
    names = set(re.findall(r"drainer_[^\s/\"']+\.deb", text))
    assert names == {f"drainer_{version[1]}_amd64.deb"}


def test_cloud_init_config_is_valid_for_drainer(tmp_path: Path) -> None:
    """The config the snippet stages passes drainer's own check (hooks dir pointed at a scratch one)."""
    text = (PACKAGING / "cloud-init" / "drainer.yaml").read_text()
    block = text.split("content: |\n", 1)[1].split("runcmd:", 1)[0]
    config = "\n".join(line[6:] for line in block.splitlines())
    (tmp_path / "hooks.d").mkdir()
    (tmp_path / "config.toml").write_text(f'{config}\n[hooks]\ndir = "{tmp_path / "hooks.d"}"\n')
    drainer = shutil.which("drainer") or str(Path(sys.executable).with_name("drainer"))
    done = subprocess.run(
        [drainer, "--config", str(tmp_path / "config.toml"), "config", "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(
    shutil.which("cloud-init") is None, reason="cloud-init not installed (apt-get install cloud-init)"
)
def test_cloud_init_schema(tmp_path: Path) -> None:
    good = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(PACKAGING / "cloud-init" / "drainer.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0 and "Valid cloud-config" in good.stdout, good.stdout + good.stderr
    # The checker does reject a broken snippet (the test can fail).
    broken = tmp_path / "broken.yaml"
    broken.write_text("#cloud-config\nruncmd: 5\n")
    bad = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(broken)], capture_output=True, check=False
    )
    assert bad.returncode != 0


def test_cron_line_honours_the_kill_switch() -> None:
    cron = (PACKAGING / "cron" / "drainer").read_text()
    line = next(ln for ln in cron.splitlines() if ln.startswith("* * * * *"))
    assert "/etc/drainer/disabled" in line and "drainer check" in line


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
