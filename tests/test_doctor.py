"""``drainer doctor`` through the CLI against the emulator: a good set-up, a misspelled NIC, an identity
with Reader only, a VM without a managed identity, refused hooks; and it never writes to Azure."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from drainer.decide import rbac
from drainer.emulator.arm_model import NIC_ROLE_ACTIONS
from drainer.emulator.control import EmulatorControl
from tests.conftest import DATA, DEFAULT_CONFIG, ROOT, Agent

ROLES_DIR = ROOT / "packaging" / "azure"
SUBSCRIPTION = "/subscriptions/8d10da13-8125-4ba9-a717-bf7490507b3d"
GROUP = f"{SUBSCRIPTION}/resourceGroups/rg-drainer"
# The built-in Reader role's permissions (learn.microsoft.com/azure/role-based-access-control/
# built-in-roles/general#reader: "actions": ["*/read"]).
READER = {"actions": ["*/read"], "notActions": []}


def _doctor(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return agent.run("doctor", *args)


def _arm_requests(control: EmulatorControl) -> list[dict[str, Any]]:
    return [r for r in control.requests() if r["path"].startswith("/subscriptions/")]


def _assert_read_only(control: EmulatorControl) -> list[dict[str, Any]]:
    """Every ARM request of the run was a GET; returns them."""
    seen = _arm_requests(control)
    writes = [(r["method"], r["path"]) for r in seen if r["method"] != "GET"]
    assert not writes, writes
    assert control.arm_writes() == []
    return seen


def _assert_no_token_shown(agent: Agent, done: subprocess.CompletedProcess[str]) -> None:
    for token in agent.emulator.model.tokens:
        assert token not in done.stdout + done.stderr


def _line(stdout: str, check: str) -> str:
    (found,) = [
        line
        for line in stdout.splitlines()
        if line.split()[:1] in (["ok"], ["FAIL"], ["skip"]) and line.split()[1:2] == [check]
    ]
    return found


def test_a_good_set_up_is_ready(agent: Agent, pool: EmulatorControl) -> None:
    done = _doctor(agent)
    assert done.returncode == 0, done.stdout + done.stderr
    for check in ("imds", "identity", "nics", "permissions", "hooks", "health"):
        assert _line(done.stdout, check).startswith("ok "), done.stdout
    assert "web-0 (vmId " in _line(done.stdout, "imds")
    assert "web-0-nic: lb-web/web-pool" in _line(done.stdout, "nics")
    assert "ready: " in done.stdout
    seen = _assert_read_only(pool)
    # The permissions API was asked for the resources themselves.
    asked = {r["path"] for r in seen if r["path"].endswith("/providers/Microsoft.Authorization/permissions")}
    # This VM's NICs come from its VM resource (a Microsoft.Compute read, asked at the VM).
    vm_scope = f"{GROUP}/providers/Microsoft.Compute/virtualMachines/web-0"
    assert f"{vm_scope}/providers/Microsoft.Authorization/permissions" in asked
    assert (
        f"{GROUP}/providers/Microsoft.Network/networkInterfaces/web-0-nic/providers/Microsoft.Authorization/permissions"
        in asked
    )
    assert all("api-version=2022-04-01" in r["query"] for r in seen if r["path"] in asked)
    _assert_no_token_shown(agent, done)


def test_json_for_scripts(agent: Agent, pool: EmulatorControl) -> None:
    done = _doctor(agent, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ready"] is True
    assert [c["check"] for c in report["checks"]] == [
        "imds",
        "identity",
        "nics",
        "permissions",
        "hooks",
        "health",
    ]
    nics = next(c for c in report["checks"] if c["check"] == "nics")
    assert nics["nics"][0]["pools"] == [
        f"{GROUP}/providers/Microsoft.Network/loadBalancers/lb-web/backendAddressPools/web-pool"
    ]
    _assert_read_only(pool)


def test_a_misspelled_nic_is_named_with_the_one_meant(agent: Agent, pool: EmulatorControl) -> None:
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nnics = ["web-0-nicc"]\n'
    done = _doctor(agent)
    assert done.returncode == 1
    line = _line(done.stdout, "nics")
    assert line.startswith("FAIL")
    assert "web-0-nicc: not found (did you mean web-0-nic?)" in line
    assert 'fix: set [drain] nics = ["web-0-nic"]' in done.stdout
    assert _line(done.stdout, "permissions").startswith("skip")
    assert "not ready: 1 problem(s)" in done.stdout
    _assert_read_only(pool)


def test_a_nic_of_another_vm_is_refused(agent: Agent, pool: EmulatorControl) -> None:
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nnics = ["web-0-nic", "web-1-nic"]\n'
    done = _doctor(agent)
    assert done.returncode == 1
    assert "web-1-nic: attached to web-1" in _line(done.stdout, "nics")
    # The NIC that is this VM's is still checked.
    assert _line(done.stdout, "permissions").startswith("ok")


def test_reader_only_names_the_missing_actions_and_the_role_that_grants_them(
    agent: Agent, pool: EmulatorControl
) -> None:
    pool.permissions("web-0", [READER])
    done = _doctor(agent)
    assert done.returncode == 1
    assert _line(done.stdout, "permissions").startswith("FAIL")
    problems = [line for line in done.stdout.splitlines() if line.startswith("  permissions: ")]
    assert len(problems) == 1, done.stdout
    problem = problems[0]
    for action in (
        "Microsoft.Network/networkInterfaces/write on NIC web-0-nic",
        "Microsoft.Network/loadBalancers/backendAddressPools/join/action on load balancer lb-web",
        "Microsoft.Network/virtualNetworks/subnets/join/action on subnet vnet/default",
    ):
        assert action in problem
    # Reads are granted by */read: not named.
    assert "networkInterfaces/read" not in problem
    assert "drainer-role-nic.json" in problem
    assert (
        'az role assignment create --assignee-object-id "$(az vm identity show -g rg-drainer -n web-0 '
        '--query principalId -o tsv)" --assignee-principal-type ServicePrincipal --role "drainer nic method" '
        f"--scope {GROUP}"
    ) in problem
    _assert_read_only(pool)


def test_not_actions_subtract_and_roles_at_resources_count(agent: Agent, pool: EmulatorControl) -> None:
    nic = f"{GROUP}/providers/Microsoft.Network/networkInterfaces/web-0-nic"
    # Network Contributor-like at the resource group but without NIC writes: missing.
    pool.permissions(
        "web-0", [{"scope": GROUP, "actions": ["Microsoft.Network/*"], "notActions": ["*/write"]}]
    )
    done = _doctor(agent)
    assert done.returncode == 1
    assert "Microsoft.Network/networkInterfaces/write on NIC web-0-nic" in done.stdout
    # The README's scoping: the method role at the NIC, the load balancer and the virtual network, a
    # reader at the resource group: ready.
    method = list(NIC_ROLE_ACTIONS)
    pool.permissions(
        "web-0",
        [
            {"scope": nic, "actions": method},
            {"scope": f"{GROUP}/providers/Microsoft.Network/loadBalancers/lb-web", "actions": method},
            {"scope": f"{GROUP}/providers/Microsoft.Network/virtualNetworks/vnet", "actions": method},
            {"scope": GROUP, "actions": list(rbac.ROLES["reader"].actions)},
        ],
    )
    done = _doctor(agent)
    assert done.returncode == 0, done.stdout


def test_a_vm_without_a_managed_identity(agent: Agent, pool: EmulatorControl) -> None:
    pool.vm_identity("web-0", system_assigned=False, user_assigned=[])
    done = _doctor(agent)
    assert done.returncode == 1
    line = _line(done.stdout, "identity")
    assert line.startswith("FAIL")
    assert "Identity not found" in line
    assert "HTTP None" not in done.stdout
    assert (
        "fix: assign a managed identity to the VM (az vm identity assign -g rg-drainer -n web-0), "
        'or use [drain] method = "probe"'
    ) in done.stdout
    assert _line(done.stdout, "nics").startswith("skip")
    assert _arm_requests(pool) == []  # nothing reached ARM without a token


def test_the_emulator_answers_a_token_request_as_imds_does_without_an_identity(
    agent: Agent, control: EmulatorControl
) -> None:
    control.vm_identity("web-0", system_assigned=False, user_assigned=[])
    url = (
        f"{agent.emulator.vm_url('web-0')}/metadata/identity/oauth2/token"
        "?api-version=2018-02-01&resource=https://management.azure.com/"
    )
    request = urllib.request.Request(url, headers={"Metadata": "true"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert refused.value.read() == (DATA / "imds_identity_not_found_400.json").read_bytes()


def test_a_user_assigned_identity_not_on_the_vm(agent: Agent, pool: EmulatorControl) -> None:
    pool.vm_identity("web-0", system_assigned=True, user_assigned=["11111111-2222-3333-4444-555555555555"])
    agent.config_text = DEFAULT_CONFIG.replace(
        "[azure]\n", '[azure]\nclient_id = "99999999-2222-3333-4444-555555555555"\n'
    )
    done = _doctor(agent)
    assert done.returncode == 1
    assert "client id 99999999-2222-3333-4444-555555555555" in _line(done.stdout, "identity")
    assert "--identities <its resource id>" in done.stdout


def test_probe_needs_no_identity_and_asks_arm_nothing(agent: Agent, control: EmulatorControl) -> None:
    control.vm_identity("web-0", system_assigned=False, user_assigned=[])
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nmethod = "probe"\n'
    done = _doctor(agent)
    assert done.returncode == 0, done.stdout
    assert _line(done.stdout, "identity").startswith("skip")
    assert _arm_requests(control) == []


def test_hooks_and_the_health_command_are_checked_as_when_used(
    agent: Agent, pool: EmulatorControl, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks.d"
    (hooks / "pre-drain").mkdir(parents=True)
    hook = hooks / "pre-drain" / "10-stop"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    (hooks / "pre-drian").mkdir()
    agent.config_text = (
        DEFAULT_CONFIG + f'\n[hooks]\ndir = "{hooks}"\n\n[restore]\nhealth_command = ["true", "--ready"]\n'
    )
    done = _doctor(agent)
    assert "pre-drain/10-stop" in _line(done.stdout, "hooks")
    assert "did you mean pre-drain?" in done.stdout  # the misspelled phase directory
    assert _line(done.stdout, "health").startswith("ok ")
    assert "trusted" in _line(done.stdout, "health")
    (hooks / "pre-drian").rmdir()
    hooks.chmod(0o775)  # group-writable: refused, as the hook runner would
    agent.config_text = agent.config_text.replace('"true"', '"/nonexistent/check-app"')
    done = _doctor(agent)
    assert done.returncode == 1
    assert _line(done.stdout, "hooks").startswith("FAIL")
    assert f"chmod go-w {hooks}" in done.stdout
    assert _line(done.stdout, "health").startswith("FAIL")
    assert "/nonexistent" in _line(done.stdout, "health")


def test_the_completion_knows_doctor(agent: Agent, tmp_path: Path) -> None:
    done = agent.run("completion", "bash")
    script = tmp_path / "drainer.bash"
    script.write_text(done.stdout)
    probe = (
        f"source {script}\n"
        'try() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _drainer; '
        'echo "${COMPREPLY[*]}"; }\n'
        "try drainer doc\ntry drainer doctor --j\n"
    )
    answers = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert answers.splitlines() == ["doctor", "--json"]


# -- the pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "action", "allowed"),
    [
        ([{"actions": ["*"]}], "Microsoft.Network/networkInterfaces/write", True),
        ([{"actions": ["Microsoft.Network/*"]}], "Microsoft.Network/networkInterfaces/write", True),
        (
            [{"actions": ["microsoft.network/networkinterfaces/WRITE"]}],
            "Microsoft.Network/networkInterfaces/write",
            True,
        ),
        ([{"actions": ["*/read"]}], "Microsoft.Network/networkInterfaces/write", False),
        ([{"actions": ["*/read"]}], "Microsoft.Network/locations/operations/read", True),
        ([{"actions": ["Microsoft.Compute/*"]}], "Microsoft.Network/networkInterfaces/read", False),
        (
            [{"actions": ["*"], "notActions": ["Microsoft.Network/*/write"]}],
            "Microsoft.Network/networkInterfaces/write",
            False,
        ),
        # NotActions are not a deny: another role granting the action allows it.
        (
            [
                {"actions": ["*"], "notActions": ["*/write"]},
                {"actions": ["Microsoft.Network/networkInterfaces/*"]},
            ],
            "Microsoft.Network/networkInterfaces/write",
            True,
        ),
        (
            [{"actions": ["Microsoft.Network/networkInterfaces/read.extra"]}],
            "Microsoft.Network/networkInterfaces/read",
            False,
        ),
        ([], "Microsoft.Network/networkInterfaces/read", False),
    ],
)
def test_permissions_are_matched_as_azure_does(
    entries: list[dict[str, Any]], action: str, allowed: bool
) -> None:
    assert rbac.allows(entries, action) is allowed


@pytest.mark.parametrize("key", sorted(rbac.ROLES))
def test_the_actions_needed_are_exactly_the_shipped_roles(key: str) -> None:
    role = rbac.ROLES[key]
    shipped = json.loads((ROLES_DIR / role.file).read_text())
    assert role.name == shipped["Name"]
    assert list(role.actions) == shipped["Actions"]


def test_the_emulator_grants_the_nic_role_by_default() -> None:
    shipped = json.loads((ROLES_DIR / "drainer-role-nic.json").read_text())
    assert list(NIC_ROLE_ACTIONS) == shipped["Actions"]


def test_every_action_a_method_needs_is_in_its_role() -> None:
    links = rbac.Links(
        f"{GROUP}/providers/Microsoft.Network/networkInterfaces/n",
        tuple(
            (kind, f"{GROUP}/providers/Microsoft.Network/x/y/backendAddressPools/p")
            for kind in rbac.LINK_ACTIONS
        ),
    )
    pools = [(f"{GROUP}/providers/Microsoft.Network/loadBalancers/lb/backendAddressPools/p", f"{GROUP}/v")]
    for method in ("nic", "admin-state"):
        needed = {
            a
            for need in rbac.needs(
                method, GROUP, [links], lists_nics=True, lists_subscription=True, admin_pools=pools
            )
            for a in need.actions
        }
        assert needed <= set(rbac.ROLES[method].actions), (method, needed - set(rbac.ROLES[method].actions))


def test_admin_state_needs_its_own_role(agent: Agent, control: EmulatorControl) -> None:
    control.add_load_balancer("lb-ip", pools=[], ip_pools=["ip-pool"])
    control.add_ip_member("lb-ip", "ip-pool", "web-0")
    agent.config_text = DEFAULT_CONFIG + '\n[drain]\nmethod = "admin-state"\n'
    done = _doctor(agent)  # the default: the nic role only
    assert done.returncode == 1
    assert "web-0-nic: lb-ip/ip-pool" in _line(done.stdout, "nics")
    assert "Microsoft.Network/loadBalancers/backendAddressPools/write on load balancer lb-ip" in done.stdout
    assert "Microsoft.Network/virtualNetworks/joinLoadBalancer/action on virtual network vnet" in done.stdout
    assert '--role "drainer admin-state method"' in done.stdout
    control.permissions("web-0", [{"actions": list(rbac.ROLES["admin-state"].actions)}])
    done = _doctor(agent)
    assert done.returncode == 0, done.stdout
    _assert_read_only(control)


def test_get_json_keeps_the_token_for_the_arm_endpoint(agent: Agent, control: EmulatorControl) -> None:
    # A nextLink (or any path) on another origin goes through the same pipeline: refused before the
    # token is attached; an ARM error keeps Azure's code.
    from drainer.config import AzureConfig
    from drainer.io.arm import ArmError, ArmNetwork

    network = ArmNetwork(
        AzureConfig(arm_endpoint=agent.emulator.url, deadline=10.0),
        subscription_id="8d10da13-8125-4ba9-a717-bf7490507b3d",
        imds_endpoint=agent.emulator.vm_url("web-0"),
    )
    network.start()
    answer = network.get_json(f"{GROUP}/providers/Microsoft.Authorization/permissions", "2022-04-01")
    assert answer["value"][0]["actions"] == list(NIC_ROLE_ACTIONS)
    elsewhere = agent.emulator.url.replace("127.0.0.1", "localhost") + "/x?api-version=1"
    with pytest.raises(ArmError, match="refused to send the ARM token"):
        network.get_json(elsewhere, "2022-04-01")
    assert not [r for r in control.requests() if r["path"] == "/x"]
    with pytest.raises(ArmError) as unknown:
        network.get_json(f"{GROUP}/providers/Microsoft.Authorization/permissions", "2001-01-01")
    assert unknown.value.status == 400
    assert unknown.value.code == "InvalidApiVersionParameter"
