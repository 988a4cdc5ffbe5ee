"""Claim 1 break (the report of an unverifiable record is itself an attack vector): for a record it
cannot verify, drainer prints "the az commands to put the NIC back by hand" (warning log line and
`drainer status`), built from the forged tag *names* without shell quoting. Azure tag names may
contain `$ ( ) ; | ` and spaces (only < > % & \\ ? / and control characters are refused), so a
"Tag Contributor" chooses text that runs as shell code in the operator's terminal when the operator
follows drainer's advice and pastes the command, with the operator's Azure credentials.

Here: tag name  drainer:lb:$(touch PWNED-1):0       -> "... -n $(touch PWNED-1) --address-pool ..."
      tag name  drainer:lb:ipconfig1:0;touch PWNED-2;#  -> "... --tags drainer:lb:...;touch PWNED-2;# ..."
Each printed command is run in bash with a stub `az` (does nothing) to show the payload runs.

Run: .venv/bin/python -m pytest attacks/test_by_hand_command_injection.py -n0 -q
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.attacks3.helpers import LATER, TagContributor
from tests.test_truth import ok

FORGED = {
    "ipconfig-part": ("drainer:lb:$(touch PWNED-1):0", "PWNED-1"),
    "index-part": ("drainer:lb:ipconfig1:0;touch PWNED-2;#", "PWNED-2"),
}


@pytest.mark.parametrize("where", list(FORGED))
def test_pasting_drainers_by_hand_command_runs_the_attackers_code(
    tagged, two_pools, emulator, tmp_path, where
):
    name, marker = FORGED[where]
    first = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    two_pools.remove(first)
    ok(tagged.check())  # one ordinary cycle (the key exists)
    tagger = TagContributor(emulator)
    answer = tagger.patch(
        "web-0-nic",
        "Merge",
        {name: "rg-drainer/lb-web/web-pool", "drainer:mac": "v1 1 2026-01-01T00:00:00Z " + "A" * 43},
    )
    assert answer.status_code == 200, answer.text  # Azure accepts such tag names
    ok(tagged.check(**LATER))
    status = tagged.run("status").stdout
    advice = re.search(r"put the NIC back by hand: (az .*)$", status, re.M)
    assert advice, status
    commands = advice.group(1).split("; then ")
    # the operator pastes each command; `az` is a stub here
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "az").chmod(0o755)
    work = tmp_path / "operator"
    work.mkdir()
    for command in commands:
        subprocess.run(
            ["bash", "-c", command],
            cwd=work,
            env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
            capture_output=True,
            timeout=10,
            check=False,
        )
    # expected: names quoted (or forged names not echoed into commands); nothing of the attacker runs
    assert not (work / marker).exists(), f"the attacker's command ran from drainer's advice: {commands}"
