"""`drainer setup`: a pip install gets what the .deb ships (the units, the cron line, the example
config), written for this installation's drainer, each file named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRAINER = str(Path(sys.executable).with_name("drainer"))


def _setup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DRAINER, "setup", *args], capture_output=True, text=True, check=False)


def test_units_run_this_drainer_and_are_the_shipped_ones_otherwise(tmp_path: Path) -> None:
    done = _setup("systemd", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    shipped = sorted((ROOT / "packaging" / "systemd").iterdir())
    for unit in shipped:
        written = (tmp_path / unit.name).read_text()
        assert written == unit.read_text().replace("/opt/drainer/bin/drainer", DRAINER), unit.name
        assert f"wrote {tmp_path / unit.name}" in done.stdout
        assert (tmp_path / unit.name).stat().st_mode & 0o777 == 0o644
    assert "systemctl enable --now drainer-probe.socket drainer-metrics.socket drainer.service" in done.stdout


def test_cron_line_runs_this_drainer(tmp_path: Path) -> None:
    target = tmp_path / "cron.d" / "drainer"
    assert _setup("cron", "--file", str(target)).returncode == 0
    line = target.read_text().splitlines()[-1]
    assert line.startswith("* * * * * root") and f"{DRAINER} check" in line


def test_config_is_written_once_and_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "drainer" / "config.toml"  # /etc/drainer need not exist
    assert _setup("config", "--file", str(target)).returncode == 0
    assert target.read_text() == (ROOT / "config.example.toml").read_text()
    target.write_text("# mine\n")
    again = _setup("config", "--file", str(target))
    assert again.returncode == 0 and "kept" in again.stdout
    assert target.read_text() == "# mine\n"
    check = subprocess.run(
        [DRAINER, "--config", str(target), "config", "check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_dry_run_names_the_files_and_writes_none(tmp_path: Path) -> None:
    done = _setup("systemd", "--dir", str(tmp_path / "units"), "--dry-run")
    assert done.returncode == 0
    assert done.stdout.count("would write") == 5
    assert not (tmp_path / "units").exists()


def test_a_planted_symlink_is_refused_in_one_line(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    units = tmp_path / "units"
    units.mkdir()
    (units / "drainer-probe.socket").symlink_to(victim)
    done = _setup("systemd", "--dir", str(units))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert victim.read_text() == "keep\n"
    assert (units / "drainer-probe.socket").is_symlink()
