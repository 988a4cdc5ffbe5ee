"""What drainer's ARM client may send and receive.

- The bearer token goes to the configured ARM endpoint only: a pipeline policy right after
  authentication (and before the transport) refuses any request whose origin, as urllib3 (the parser
  that connects) reads it, is not the endpoint's: a long-running operation's ``Azure-AsyncOperation``
  or ``Location`` URL on another host or scheme, or a redirect, never receives the token.
- Answers are size-capped: a response hook reads at most ``MAX_BODY`` bytes (decoded) and refuses a
  larger body before it is held in memory.
- Every exchange ends by the action's deadline (``[azure] deadline``): connect, send and each read of
  the answer, whatever the per-request timeouts allow (``drainer.io.deadline``), so an answer dripped
  a byte at a time (a slow proxy, a middlebox) cannot hold a drain and the run lock past it.

These raise exceptions that are not ``AzureError`` on purpose: azure-core's retry loop would retry those.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import requests
from azure.core.pipeline.policies import CustomHookPolicy
from urllib3 import HTTPResponse
from urllib3.exceptions import HTTPError
from urllib3.util import parse_url

from drainer.io.deadline import Deadline, DeadlineAdapter

MAX_BODY = 16 * 1024 * 1024  # an ARM answer larger than this is refused (a NIC or pool is a few KiB)


class ArmRefusedError(Exception):
    """drainer refused to send a request, or to read an answer (the message says why)."""


class ArmDeadlineError(Exception):
    """The deadline passed, or the next retry (or rate-limit wait) would start after it.

    Deliberately not an AzureError: azure-core's retry loop treats those as retryable and would
    swallow it.
    """


def _origin(url: str) -> tuple[str, str, int]:
    parsed = parse_url(url)
    scheme = (parsed.scheme or "").lower()
    host = (parsed.host or "").lower().rstrip(".")
    return scheme, host, parsed.port or (443 if scheme == "https" else 80)


class ArmOnlyPolicy(CustomHookPolicy):  # type: ignore[type-arg]
    """azure-core's custom-hook policy (it sits right after authentication), refusing any request
    to an origin other than the ARM endpoint's."""

    def __init__(self, arm_endpoint: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allowed = _origin(arm_endpoint)

    def on_request(self, request: Any) -> None:
        url = str(request.http_request.url)
        if "@" in url.split("?", 1)[0] or "\\" in url or _origin(url) != self.allowed:
            scheme, host, port = _origin(url)
            raise ArmRefusedError(
                f"refused to send the ARM token to {scheme}://{host}:{port}, which is not the configured "
                "ARM endpoint (a long-running operation or redirect pointed elsewhere)"
            )
        super().on_request(request)


def _cap_body(
    response: requests.Response, *args: Any, deadline: Deadline, **kwargs: Any
) -> requests.Response:
    """requests response hook: read the body now, at most MAX_BODY bytes, and serve it from memory.

    Raises ArmRefusedError (too large), ArmDeadlineError (the deadline passed while reading) and
    requests' ConnectionError (the connection broke or timed out mid-body: azure-core takes it as a
    broken connection, as when requests reads the body itself).
    """
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        response.close()
        raise ArmRefusedError(f"an ARM answer of {length} bytes is larger than the {MAX_BODY}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.raw.stream(65536, decode_content=True):
            size += len(chunk)
            if size > MAX_BODY:
                response.close()
                raise ArmRefusedError(f"an ARM answer is larger than the {MAX_BODY}-byte limit")
            chunks.append(chunk)
    except (HTTPError, OSError) as exc:
        # urllib3's own errors: requests maps them only for the bodies it reads itself.
        response.close()
        if deadline.passed():
            raise ArmDeadlineError(
                f"the answer did not complete within the {deadline.seconds:g} s deadline"
            ) from exc
        raise requests.exceptions.ConnectionError(exc, response=response) from exc
    body = b"".join(chunks)
    response.raw.release_conn()
    headers = {k: v for k, v in response.raw.headers.items() if k.lower() != "content-encoding"}
    headers["Content-Length"] = str(len(body))
    response.raw = HTTPResponse(
        body=io.BytesIO(body), headers=headers, status=response.status_code, preload_content=False
    )
    response.headers.pop("Content-Encoding", None)
    response.headers["Content-Length"] = str(len(body))
    return response


def arm_session(deadline: Deadline) -> requests.Session:
    """The session ARM requests go through: every answer size-capped, every exchange over by
    ``deadline`` (the action's: ``ArmNetwork.start`` moves it)."""
    session = requests.Session()
    adapter = DeadlineAdapter(deadline)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.hooks["response"].append(functools.partial(_cap_body, deadline=deadline))
    return session
