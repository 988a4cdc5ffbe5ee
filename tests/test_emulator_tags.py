"""The emulator keeps NIC tags as Azure does, driven by the real azure-mgmt-network client:

- a PUT replaces the resource, tags included (tags left out of the body are gone);
- ``UpdateTags`` (PATCH) replaces the tag set and nothing else;
- Azure's documented limits are enforced (50 tags, names without ``<>%&\\?/``, values of 256);
- an Azure Policy on tags can deny the write (403 RequestDisallowedByPolicy) or strip the tags.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import TagsObject

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator

SUB = "8d10da13-8125-4ba9-a717-bf7490507b3d"
RG = "rg-drainer"


class _EmulatorToken:
    """A credential holding a token the emulator issued (fetched from its IMDS identity endpoint)."""

    def __init__(self, emulator: RunningEmulator) -> None:
        import requests

        answer = requests.get(
            f"{emulator.url}/metadata/identity/oauth2/token",
            params={"api-version": "2018-02-01", "resource": emulator.url},
            headers={"Metadata": "true"},
            timeout=5,
        ).json()
        self.token = str(answer["access_token"])

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, 2**31)


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[NetworkManagementClient]:
    network = NetworkManagementClient(
        _EmulatorToken(emulator),  # type: ignore[arg-type]
        SUB,
        base_url=emulator.url,
        credential_scopes=[emulator.url + "/.default"],
        polling_interval=0.01,
    )
    yield network
    network.close()


def _put(client: NetworkManagementClient, nic: Any) -> Any:
    return client.network_interfaces.begin_create_or_update(
        RG, "web-0-nic", nic, enforce_https=False
    ).result()


def test_put_replaces_tags_and_patch_replaces_only_tags(client: NetworkManagementClient) -> None:
    nic = client.network_interfaces.get(RG, "web-0-nic", enforce_https=False)
    nic.tags = {"owner": "team-a", "env": "prod"}
    _put(client, nic)
    nic = client.network_interfaces.get(RG, "web-0-nic", enforce_https=False)
    assert nic.tags == {"owner": "team-a", "env": "prod"}
    nic.tags = None  # a PUT without tags: Azure replaces the resource, the tags are gone
    _put(client, nic)
    assert not client.network_interfaces.get(RG, "web-0-nic", enforce_https=False).tags
    patched = client.network_interfaces.update_tags(
        RG, "web-0-nic", TagsObject(tags={"only": "this"}), enforce_https=False
    )
    assert patched.tags == {"only": "this"}
    after = client.network_interfaces.get(RG, "web-0-nic", enforce_https=False)
    assert after.tags == {"only": "this"}
    assert after.ip_configurations[0].private_ip_address == nic.ip_configurations[0].private_ip_address


@pytest.mark.parametrize(
    ("tags", "code"),
    [
        ({f"t{i}": "x" for i in range(51)}, "InvalidTagCount"),
        ({"a/b": "x"}, "InvalidTagNameCharacters"),
        ({"ok": "v" * 257}, "InvalidTagValueLength"),
        ({"Owner": "a", "owner": "b"}, "InvalidTagName"),
    ],
)
def test_tag_limits_are_azures(client: NetworkManagementClient, tags: dict[str, str], code: str) -> None:
    nic = client.network_interfaces.get(RG, "web-0-nic", enforce_https=False)
    nic.tags = tags
    with pytest.raises(HttpResponseError) as caught:
        _put(client, nic)
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == code


def test_a_policy_denies_or_strips_drainer_tags(
    client: NetworkManagementClient, control: EmulatorControl
) -> None:
    control.arm_settings(tag_policy="deny")
    nic = client.network_interfaces.get(RG, "web-0-nic", enforce_https=False)
    nic.tags = {"drainer": "out", "owner": "me"}
    with pytest.raises(HttpResponseError) as caught:
        _put(client, nic)
    assert caught.value.status_code == 403
    assert caught.value.error is not None and caught.value.error.code == "RequestDisallowedByPolicy"
    control.arm_settings(tag_policy="strip")
    nic = client.network_interfaces.get(RG, "web-0-nic", enforce_https=False)
    nic.tags = {"drainer": "out", "owner": "me"}
    assert _put(client, nic).tags == {"owner": "me"}  # the write went through, our tag did not


def test_arm_faults_look_like_azures(client: NetworkManagementClient, control: EmulatorControl) -> None:
    for status, code in (
        (404, "ResourceNotFound"),
        (409, "AnotherOperationInProgress"),
        (412, "PreconditionFailed"),
    ):
        control.fault(match="/networkInterfaces/web-0-nic", status=status, count=1, method="GET")
        with pytest.raises(HttpResponseError) as caught:
            client.network_interfaces.get(RG, "web-0-nic", enforce_https=False, retry_total=0)
        assert caught.value.status_code == status
        assert caught.value.error is not None and caught.value.error.code == code
