"""``drainer doctor``: is this VM ready for its first maintenance? Online and read-only.

Checks, in order, each one line (``ok``, ``FAIL``, or ``skip`` when an earlier failure leaves nothing
to check): IMDS and this VM's identity; a token for the configured Azure identity; this VM's NICs and
their backend pools (and each NIC named in ``[drain] nics``); the right to write them, from Azure's
permissions API, against the actions the drain method needs (``drainer.decide.rbac``); the hooks
directory and the restore health command (trusted as they
will be when used: ``drainer.io.trust``). Then one line per problem with its fix. Exit 0 when ready,
1 otherwise.

It never writes to Azure: every ARM request is a GET through the network client's pipeline (the same
credential, token guard and retries as a drain). The token is asked for and dropped: never printed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drainer.base.errors import EXIT_ACTION_FAILED, EXIT_OK, DrainerError
from drainer.base.instance import InstanceInfo
from drainer.base.terminal import printable
from drainer.config import DEFAULT_HOOKS_DIR, Config
from drainer.decide import rbac

PERMISSIONS_API = "2022-04-01"
_MAX_PAGES = 20  # of one permissions answer (each entry is one role assignment: a few at most)
_IMDS_CURL = (
    "curl -H Metadata:true --noproxy '*' \"http://169.254.169.254/metadata/instance?api-version=2021-02-01\""
)


@dataclass
class Check:
    """One line of the report, and the problems behind a FAIL (each: what is wrong, how to fix it)."""

    name: str
    status: str  # "ok" | "FAIL" | "skip"
    found: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status.lower(),
            "found": self.found,
            "problems": [{"what": what, "fix": fix} for what, fix in self.problems],
            **self.details,
        }


def ok(name: str, found: str, **details: Any) -> Check:
    return Check(name, "ok", found, details=details)


def fail(name: str, found: str, problems: list[tuple[str, str]], **details: Any) -> Check:
    return Check(name, "FAIL", found, problems, details)


def skip(name: str, why: str) -> Check:
    return Check(name, "skip", why)


@dataclass
class _Found:
    """What the checks learnt, for the checks after them."""

    vm: InstanceInfo | None = None
    token: bool = False
    network: Any = None
    nics: list[Any] = field(default_factory=list)  # the NICs read (azure-mgmt-network models)
    # admin-state: NIC id (lower case) -> (pool id, virtual network id) of each of its addresses in an
    # IP-based pool.
    admin_pools: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def doctor(config: Config, *, as_json: bool) -> int:
    """Run every check and print the report. Returns the exit code (0 ready, 1 not)."""
    checks = run(config)
    problems = [(c.name, what, fix) for c in checks for what, fix in c.problems]
    if as_json:
        print(
            json.dumps(
                {
                    "ready": not problems,
                    "config": config.source,
                    "method": config.drain.method,
                    "checks": [c.to_json() for c in checks],
                },
                indent=2,
            )
        )
    else:
        print(f"drainer doctor: method {config.drain.method}, config {config.source}")
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(printable(f"{c.status:<4}  {c.name:<{width}}  {c.found}"))
        print()
        if problems:
            print(f"not ready: {len(problems)} problem(s)")
            for name, what, fix in problems:
                print(printable(f"  {name}: {what}; fix: {fix}"))
        else:
            print("ready: drainer can take this VM out of rotation and put it back")
    return EXIT_ACTION_FAILED if problems else EXIT_OK


def run(config: Config) -> list[Check]:
    """Every check, in order; a check that depends on a failed one is skipped."""
    found = _Found()
    steps: list[Callable[[Config, _Found], Check]] = [
        _imds,
        _identity,
        _nics,
        _permissions,
        _hooks,
        _health,
    ]
    return [step(config, found) for step in steps]


# -- IMDS and the VM ---------------------------------------------------------------------------


def _imds(config: Config, found: _Found) -> Check:
    from drainer.app.identity import with_override  # noqa: PLC0415
    from drainer.io.imds import ImdsClient  # noqa: PLC0415

    client = ImdsClient(config.imds)
    try:
        vm = with_override(config, client.instance())
    except DrainerError as exc:
        return fail(
            "imds",
            str(exc),
            [
                (
                    f"IMDS did not answer at {config.imds.endpoint}",
                    "run drainer on an Azure VM and let it reach IMDS without a proxy "
                    f"(drainer never uses one for IMDS): {_IMDS_CURL}",
                )
            ],
        )
    finally:
        client.close()
    if not (vm.resource_id and vm.subscription_id and vm.resource_group):
        return fail(
            "imds",
            f"{vm.name}: instance metadata names no resource id, subscription or resource group",
            [("this VM's resource id is unknown", f"check the instance metadata: {_IMDS_CURL}")],
        )
    found.vm = vm
    return ok("imds", f"{vm.name} (vmId {vm.vm_id}, {vm.resource_id})", vm=vm.to_json())


# -- the identity ------------------------------------------------------------------------------


def _uses_arm(config: Config) -> bool:
    return config.drain.method in ("nic", "admin-state")


def _who(config: Config) -> str:
    if config.azure.identity == "default":
        return "DefaultAzureCredential"
    if config.azure.client_id:
        return f"the VM's user-assigned managed identity (client id {config.azure.client_id})"
    return "the VM's managed identity"


def _identity_fix(config: Config, vm: InstanceInfo) -> str:
    if config.azure.identity == "default":
        return (
            "sign in (az login) or set the AZURE_* variables DefaultAzureCredential reads; on an Azure VM "
            'use [azure] identity = "managed"'
        )
    command = (
        f"az vmss identity assign -g {vm.resource_group} -n {vm.scale_set}"
        if vm.scale_set
        else f"az vm identity assign -g {vm.resource_group} -n {vm.name}"
    )
    if config.azure.client_id:
        return (
            f"assign the user-assigned identity with client id {config.azure.client_id} to the VM "
            f"({command} --identities <its resource id>), or correct [azure] client_id"
        )
    return f'assign a managed identity to the VM ({command}), or use [drain] method = "probe"'


# azure-identity's (MSAL's) text for an error answer of the token endpoint: "Token request error:
# (invalid_request) Identity not found" (azure/identity/_internal/msal_managed_identity_client.py).
_TOKEN_ERROR = re.compile(r"Token request error: \(([^)]*)\) ?(.*)")


def _token_failure(exc: BaseException, endpoint: str) -> str:
    """Why no token came: the token endpoint's (``endpoint``: who that is) own error when the exception
    carries it, else the credential's first sentence. An error answer carries no token."""
    from azure.core.exceptions import HttpResponseError  # noqa: PLC0415

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HttpResponseError) and seen.status_code is not None:
            text = ""
            try:
                body = json.loads(seen.response.text()) if seen.response is not None else None
            except (ValueError, AttributeError, RecursionError):
                body = None
            if isinstance(body, dict):
                text = ": ".join(str(body[k]) for k in ("error", "error_description") if body.get(k))
            return f"{endpoint} answered HTTP {seen.status_code}" + (f" {text}" if text else "")
        seen = seen.__cause__ or seen.__context__
    message = " ".join(str(exc).split())
    answered = _TOKEN_ERROR.search(message)
    if answered:
        code, description = answered.group(1), answered.group(2).strip()
        return f"{endpoint} answered {code}" + (f": {description}" if description else "")
    return (message.split(". ")[0] or type(exc).__name__)[:300]


def _identity(config: Config, found: _Found) -> Check:
    if not _uses_arm(config):
        return skip("identity", f'not needed: [drain] method = "{config.drain.method}" makes no ARM call')
    if found.vm is None:
        return skip("identity", "needs IMDS (see imds)")
    from azure.core.exceptions import AzureError  # noqa: PLC0415

    from drainer.io.arm import make_credential  # noqa: PLC0415

    scope = config.azure.arm_endpoint.rstrip("/") + "/.default"
    try:
        credential = make_credential(config.azure, config.imds.endpoint)
        credential.get_token(scope)  # asked for and dropped: never kept, logged or printed
    except (AzureError, ValueError) as exc:
        why = _token_failure(exc, "IMDS" if config.azure.identity == "managed" else "the token endpoint")
        return fail(
            "identity",
            f"no token for {_who(config)}: {why}",
            [(f"no token for {_who(config)} ({why})", _identity_fix(config, found.vm))],
        )
    found.token = True
    return ok("identity", f"a token for {_who(config)} (scope {scope})")


def _network(config: Config, found: _Found) -> Any:
    if found.network is None and found.vm is not None:
        from drainer.io.arm import ArmNetwork  # noqa: PLC0415

        found.network = ArmNetwork(
            config.azure, subscription_id=found.vm.subscription_id, imds_endpoint=config.imds.endpoint
        )
        found.network.start()  # one deadline for the doctor's ARM reads
    return found.network


def _arm_fix(config: Config) -> str:
    return (
        f"check that this VM reaches {config.azure.arm_endpoint} (HTTPS_PROXY is honoured for ARM) "
        "and that its identity may read there (see permissions)"
    )


# -- NICs and pools ----------------------------------------------------------------------------


def _short(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


def pool_name(pool_id: str) -> str:
    """``lb/pool`` (or ``gateway/pool``) for a backend pool id."""
    parts = pool_id.rstrip("/").split("/")
    return f"{parts[-3]}/{parts[-1]}" if len(parts) >= 3 else pool_id


def same_group(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _nic_id(vm: InstanceInfo, name: str) -> str:
    if name.startswith("/"):
        return name
    return (
        f"/subscriptions/{vm.subscription_id}/resourceGroups/{vm.resource_group}"
        f"/providers/Microsoft.Network/networkInterfaces/{name}"
    )


def _attached(nic: Any, vm: InstanceInfo) -> bool:
    owner = nic.virtual_machine.id if nic.virtual_machine is not None else ""
    return str(owner or "").lower().rstrip("/") == vm.resource_id.lower().rstrip("/")


def _pools(nic: Any) -> list[str]:
    return [
        str(ref.id)
        for config in nic.ip_configurations or []
        for ref in [
            *(config.load_balancer_backend_address_pools or []),
            *(config.application_gateway_backend_address_pools or []),
        ]
    ]


def _suggest(name: str, network: Any, vm: InstanceInfo) -> str:
    """The NIC of the VM's resource group whose name is closest to ``name`` (this VM's first), or ""."""
    try:
        listed = network.list_nics(vm.resource_group)
    except DrainerError:
        return ""
    mine = [str(n.name) for n in listed if _attached(n, vm)]
    others = [str(n.name) for n in listed if not _attached(n, vm)]
    close = difflib.get_close_matches(name, mine, n=1, cutoff=0.6) or difflib.get_close_matches(
        name, others, n=1, cutoff=0.6
    )
    return close[0] if close else ""


def _nics(config: Config, found: _Found) -> Check:
    if config.drain.method not in ("nic", "admin-state"):
        return skip("nics", f'not needed: [drain] method = "{config.drain.method}"')
    vm = found.vm
    if vm is None or not found.token:
        return skip("nics", "needs IMDS and a token (see above)")
    from drainer.io.arm import ArmError  # noqa: PLC0415

    network = _network(config, found)
    problems: list[tuple[str, str]] = []
    lines: list[str] = []
    if config.drain.method == "nic" and vm.is_uniform_scale_set_instance:
        from drainer.act.lb_nic import UNIFORM_HELP  # noqa: PLC0415

        problems.append(("this VM's NICs cannot be written", UNIFORM_HELP))
    try:
        if config.drain.nics:
            for name in config.drain.nics:
                nic = _read_configured(network, vm, name, problems, lines)
                if nic is not None:
                    found.nics.append(nic)
        else:
            # As a drain finds them (lb_common.discover_nics): its VM resource's networkProfile.
            found.nics = [
                _read_nic(network, nic_id) for nic_id in sorted(network.get_vm_nics(vm.resource_id))
            ]
            if not found.nics:
                problems.append(
                    (
                        f"the VM resource {vm.resource_id} lists no NIC",
                        "name them in [drain] nics (by resource id when they are in another resource group)",
                    )
                )
        if config.drain.method == "admin-state" and found.nics:
            found.admin_pools = _admin_pools(network, found.nics)
    except ArmError as exc:
        problems.append((str(exc), _arm_fix(config)))
    lines += [_describe_nic(nic, config, vm, found, problems) for nic in found.nics]
    summary = "; ".join(lines) or "no NIC"
    details = {"nics": [{"id": str(n.id), "pools": _pools(n)} for n in found.nics]}
    return fail("nics", summary, problems, **details) if problems else ok("nics", summary, **details)


def _read_nic(network: Any, nic_id: str) -> Any:
    """The NIC at ``nic_id``. Raises ArmError."""
    from drainer.act.lb_common import ResourceId  # noqa: PLC0415

    rid = ResourceId.parse(nic_id)
    return network.get_nic(rid.resource_group, rid.name)


def _read_configured(
    network: Any, vm: InstanceInfo, name: str, problems: list[tuple[str, str]], lines: list[str]
) -> Any:
    """The NIC ``[drain] nics`` names, or None (a problem and a line saying why)."""
    from drainer.act.lb_common import ResourceId  # noqa: PLC0415
    from drainer.io.arm import ArmError  # noqa: PLC0415

    nic_id = _nic_id(vm, name)
    rid = ResourceId.parse(nic_id)
    try:
        nic = network.get_nic(rid.resource_group, rid.name)
    except ArmError as exc:
        if exc.status != 404:
            raise
        close = _suggest(rid.name, network, vm) if same_group(rid.resource_group, vm.resource_group) else ""
        hint = f" (did you mean {close}?)" if close else ""
        fix = f'set [drain] nics = ["{close}"]' if close else "correct [drain] nics (names or resource ids)"
        problems.append((f"[drain] nics: {name} not found in resource group {rid.resource_group}{hint}", fix))
        lines.append(f"{name}: not found{hint}")
        return None
    if not _attached(nic, vm):
        owner = _short(str(nic.virtual_machine.id)) if nic.virtual_machine is not None else "no VM"
        problems.append(
            (f"[drain] nics: {name} is attached to {owner}, not {vm.name}", "name only this VM's NICs")
        )
        lines.append(f"{name}: attached to {owner}")
        return None
    return nic


def _describe_nic(
    nic: Any, config: Config, vm: InstanceInfo, found: _Found, problems: list[tuple[str, str]]
) -> str:
    from drainer.decide.nicrecord import SUMMARY  # noqa: PLC0415

    name = str(nic.name)
    if config.drain.method == "admin-state":
        mine = [pool_name(pool) for pool, _ in found.admin_pools.get(str(nic.id).lower(), [])]
        if not any(found.admin_pools.values()) and nic is found.nics[0]:
            problems.append(
                (
                    f"{vm.name} has no address in an IP-based backend pool",
                    'put its addresses in the IP-based pools admin-state drains, or use method = "nic"',
                )
            )
        return f"{name}: " + (", ".join(sorted(set(mine))) or "no IP-based pool")
    pools = [pool_name(p) for p in _pools(nic)]
    record = (nic.tags or {}).get(SUMMARY)
    if record:
        return f"{name}: {', '.join(pools) or 'no pool'} (drainer's record: {record})"
    if not pools:
        problems.append(
            (
                f"{name} is in no backend pool: a drain would have nothing to take out",
                "put the NIC in its load balancer's backend pool, "
                "or name the NICs that serve in [drain] nics",
            )
        )
        return f"{name}: no backend pool"
    return f"{name}: {', '.join(pools)}"


def _admin_pools(network: Any, nics: list[Any]) -> dict[str, list[tuple[str, str]]]:
    """Per NIC id (lower case): (pool id, virtual network id) of each of its addresses in an IP-based
    pool of the subscription's load balancers (matched by IP and virtual network, as admin-state does)."""
    from drainer.act.lb_common import vnet_of  # noqa: PLC0415

    owner = {
        (str(c.private_ip_address), vnet_of(str(c.subnet.id))): str(nic.id).lower()
        for nic in nics
        for c in nic.ip_configurations or []
        if c.private_ip_address and c.subnet is not None and c.subnet.id
    }
    found: dict[str, list[tuple[str, str]]] = {}
    for lb in network.list_all_load_balancers():
        for pool in lb.backend_address_pools or []:
            for address in pool.load_balancer_backend_addresses or []:
                vnet = address.virtual_network.id if address.virtual_network is not None else ""
                nic_id = owner.get((str(address.ip_address), str(vnet or "").lower()))
                if nic_id:
                    found.setdefault(nic_id, []).append((str(pool.id), str(vnet)))
    return found


# -- permissions -------------------------------------------------------------------------------


def _links(nic: Any, subscription: str) -> rbac.Links:
    """What a PUT of this NIC links (its body as it is, and the pools drainer's record puts back)."""
    from drainer.decide.nicrecord import decode  # noqa: PLC0415

    links: list[tuple[str, str]] = []
    if nic.network_security_group is not None and nic.network_security_group.id:
        links.append(("nsg", str(nic.network_security_group.id)))
    for config in nic.ip_configurations or []:
        if config.subnet is not None and config.subnet.id:
            links.append(("subnet", str(config.subnet.id)))
        if config.public_ip_address is not None and config.public_ip_address.id:
            links.append(("public-ip", str(config.public_ip_address.id)))
        for kind, refs in (
            ("lb-pool", config.load_balancer_backend_address_pools),
            ("nat-rule", config.load_balancer_inbound_nat_rules),
            ("asg", config.application_security_groups),
            ("appgw-pool", config.application_gateway_backend_address_pools),
        ):
            links.extend((kind, str(ref.id)) for ref in refs or [] if ref.id)
    links.extend((ref.kind, ref.pool_id) for ref in decode(dict(nic.tags or {}), subscription).refs)
    return rbac.Links(str(nic.id), tuple(dict.fromkeys(links)))


def _permissions_at(network: Any, scope: str) -> list[dict[str, Any]]:
    """The permissions API's answer for ``scope``, every page. Raises ArmError."""
    path = f"{scope.rstrip('/')}/providers/Microsoft.Authorization/permissions"
    value: list[dict[str, Any]] = []
    for _ in range(_MAX_PAGES):
        answer = network.get_json(path, PERMISSIONS_API)
        value.extend(v for v in answer.get("value") or [] if isinstance(v, dict))
        path = str(answer.get("nextLink") or "")
        if not path:
            break
    return value


def _assign_command(config: Config, vm: InstanceInfo, role: rbac.Role, scope: str) -> str:
    if config.azure.identity == "managed" and config.azure.client_id:
        who = f"--assignee {config.azure.client_id}"
    else:
        show = (
            f"az vmss identity show -g {vm.resource_group} -n {vm.scale_set}"
            if vm.scale_set
            else f"az vm identity show -g {vm.resource_group} -n {vm.name}"
        )
        who = (
            f'--assignee-object-id "$({show} --query principalId -o tsv)" '
            "--assignee-principal-type ServicePrincipal"
        )
    return f'az role assignment create {who} --role "{role.name}" --scope {scope}'


def _group_of(resource_id: str) -> str:
    parts = resource_id.split("/")
    lowered = [p.lower() for p in parts]
    if "resourcegroups" in lowered:
        return "/".join(parts[: lowered.index("resourcegroups") + 2])
    return resource_id


def _permission_problems(
    config: Config, vm: InstanceInfo, short_of: list[tuple[rbac.Need, list[str]]], method: str
) -> list[tuple[str, str]]:
    """One problem per role that grants what is missing (or per action no shipped role holds)."""
    by_role: dict[str, tuple[rbac.Role | None, list[tuple[rbac.Need, str]]]] = {}
    for need, actions in short_of:
        for action in actions:
            role = rbac.role_for(method, action)
            key = role.file if role else action
            by_role.setdefault(key, (role, []))[1].append((need, action))
    problems = []
    for role, items in by_role.values():
        places: dict[str, list[str]] = {}
        for need, action in items:
            places.setdefault(need.label, []).append(action)
        what = "missing " + "; ".join(f"{', '.join(a)} on {label}" for label, a in places.items())
        if role is None:
            fix = "add these actions to the drain method's role (README, Permissions)"
        else:
            scopes = sorted({_group_of(need.scope) for need, _ in items})
            commands = " && ".join(_assign_command(config, vm, role, s) for s in scopes)
            fix = (
                f'grant {role.file} (role "{role.name}"; create it once with az role definition create '
                f"--role-definition /usr/share/drainer/azure/{role.file}): {commands}"
            )
        problems.append((what, fix))
    return problems


def _permissions(config: Config, found: _Found) -> Check:
    if config.drain.method not in ("nic", "admin-state"):
        return skip("permissions", f'not needed: [drain] method = "{config.drain.method}"')
    vm = found.vm
    if vm is None or not found.token or not found.nics:
        return skip("permissions", "needs this VM's NICs (see nics)")
    from drainer.io.arm import ArmError  # noqa: PLC0415

    network = _network(config, found)
    group_id = f"/subscriptions/{vm.subscription_id}/resourceGroups/{vm.resource_group}"
    needs = rbac.needs(
        config.drain.method,
        group_id,
        [_links(nic, vm.subscription_id) for nic in found.nics],
        lists_nics=not config.drain.nics,
        lists_subscription=config.approval.enabled,
        app_gateways=config.drain.application_gateways,
        admin_pools=[p for pools in found.admin_pools.values() for p in pools],
        vm_id=vm.resource_id,
    )
    short_of: list[tuple[rbac.Need, list[str]]] = []
    problems: list[tuple[str, str]] = []
    for need in needs:
        try:
            held = _permissions_at(network, need.scope)
        except ArmError as exc:
            problems.append(
                (f"cannot read the identity's permissions on {need.label}: {exc}", _arm_fix(config))
            )
            continue
        lacking = rbac.missing(held, need.actions)
        if lacking:
            short_of.append((need, lacking))
    problems += _permission_problems(config, vm, short_of, config.drain.method)
    details = {"scopes": [{"scope": n.scope, "actions": list(n.actions)} for n in needs]}
    if problems:
        lacking_count = sum(len(a) for _, a in short_of)
        return fail(
            "permissions",
            f"{lacking_count} action(s) missing on {len(short_of)} of {len(needs)} scope(s)",
            problems,
            missing=[{"scope": n.scope, "actions": a} for n, a in short_of],
            **details,
        )
    total = sum(len(n.actions) for n in needs)
    where = ", ".join(n.label for n in needs)
    return ok("permissions", f"all {total} action(s) granted on {where}", **details)


# -- hooks and the restore gate ------------------------------------------------------------------


def _trust_fix(path: str) -> str:
    return f"make it owned by root and writable by root alone (chown root: {path} && chmod go-w {path})"


def _hooks(config: Config, found: _Found) -> Check:
    from drainer.act.hooks import PHASES, discover, problems  # noqa: PLC0415
    from drainer.config.check import findings  # noqa: PLC0415
    from drainer.io.trust import TrustError, check  # noqa: PLC0415

    base = Path(config.hooks.dir)
    if not base.exists():
        if config.hooks.dir == DEFAULT_HOOKS_DIR:
            return ok("hooks", f"none ({base} does not exist)")
        return fail(
            "hooks",
            f"{base} does not exist",
            [
                (
                    f"hooks dir {base} does not exist: no hook will run",
                    f"mkdir -p {base}/pre-drain, or set [hooks] dir",
                )
            ],
        )
    trouble: list[tuple[str, str]] = []
    try:
        check(config.hooks.dir, strict_leaf=True)
    except TrustError as exc:
        # Its hooks are refused with it: one problem, not one per hook.
        trouble.append((f"hooks dir refused: {exc}", _trust_fix(exc.path)))
        return fail("hooks", f"{base}: refused ({exc.reason})", trouble)
    trouble += [
        (
            f"hook refused: {p}",
            "make the hook and every directory above it owned by root and writable by root alone "
            "(chmod go-w on the path named)",
        )
        for p in problems(config)
    ]
    trouble += [
        (f.message, "rename or move it (README, Hooks)")
        for f in findings(config)
        if f.severity == "error" and str(base) in f.message
    ]
    hooks = [f"{phase}/{hook.name}" for phase in PHASES for hook in discover(config, phase)[0]]
    summary = f"{base}: " + (", ".join(hooks) if hooks else "no hooks")
    return fail("hooks", summary, trouble, hooks=hooks) if trouble else ok("hooks", summary, hooks=hooks)


def _health(config: Config, found: _Found) -> Check:
    from drainer.act.hooks import DEFAULT_PATH  # noqa: PLC0415
    from drainer.io.trust import TrustError, check, find_program  # noqa: PLC0415

    cfg = config.restore
    url = f"health_url {cfg.health_url} (not called)" if cfg.health_url else ""
    if not cfg.health_command:
        return ok("health", url or "no restore health check ([restore] health_command, health_url)")
    name = cfg.health_command[0]
    try:
        path = find_program(name, os.environ.get("PATH", DEFAULT_PATH))
    except TrustError as exc:
        return fail(
            "health",
            str(exc),
            [(f"restore health command {exc}", "install it or correct [restore] health_command")],
        )
    if not Path(path).exists():
        return fail(
            "health",
            f"{path}: not found",
            [(f"restore health command {path} not found", "install it or correct [restore] health_command")],
        )
    try:
        checked = check(path)
    except TrustError as exc:
        return fail(
            "health", f"{name}: {exc}", [(f"restore health command refused: {exc}", _trust_fix(exc.path))]
        )
    if not os.access(checked.real, os.X_OK):
        return fail(
            "health",
            f"{checked.real}: not executable",
            [(f"restore health command {checked.real} is not executable", f"chmod 0755 {checked.real}")],
        )
    shown = " ".join(cfg.health_command)
    return ok("health", f"{shown} ({checked.real}, trusted)" + (f"; {url}" if url else ""))
