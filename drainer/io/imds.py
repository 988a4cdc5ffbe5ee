"""The Instance Metadata Service client: scheduled events (GET, POST approval) and instance metadata.

Every request carries ``Metadata: true`` and a fresh ``x-ms-client-request-id``, never goes through a
proxy (IMDS is link-local; environment proxy settings are ignored), and is retried with exponential
backoff and jitter on connection errors and on the status codes below, honouring ``Retry-After``, but
never past the configured deadline. The deadline bounds the whole call, not each read: connect, send
and every read of the answer of every attempt (``drainer.io.deadline``), so an answer dripped a byte
at a time ends at the deadline too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import requests
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from drainer.base import metrics
from drainer.base.errors import ImdsHttpError, ImdsUnavailableError, MalformedDocumentError
from drainer.base.events import EventsDocument, parse_document
from drainer.base.instance import InstanceInfo
from drainer.config import ImdsConfig
from drainer.io.deadline import Deadline, DeadlineAdapter

# Status codes worth another try, and why.
RETRY_STATUSES = frozenset(
    {
        404,  # IMDS answers 404 transiently while the VM's metadata is not yet available
        410,  # "Gone": IMDS is being updated; Microsoft says retry for up to 70 s
        429,  # throttled (about 5 requests per second per VM)
        500,  # server error: IMDS documents retrying it
        502,
        503,  # service unavailable, sometimes with Retry-After
        504,
    }
)


class _DeadlineExceededError(Exception):
    """The next retry would start after the deadline. Carries what the last attempt got."""

    def __init__(self, status: int | None, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class _DeadlineRetry(Retry):
    """urllib3's Retry, bounded by a monotonic deadline: it never sleeps past it."""

    deadline: float = float("inf")

    def new(self, **kw: Any) -> _DeadlineRetry:
        fresh = super().new(**kw)
        fresh.deadline = self.deadline
        return fresh

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or time.monotonic() >= self.deadline

    def sleep(self, response: Any = None) -> None:
        wait = self.get_backoff_time()
        if response is not None and self.respect_retry_after_header:
            retry_after = self.get_retry_after(response)
            if retry_after is not None:
                wait = max(wait, retry_after)
        if time.monotonic() + wait >= self.deadline:
            last = self.history[-1] if self.history else None
            error = type(last.error).__name__ if last is not None and last.error is not None else ""
            raise _DeadlineExceededError(last.status if last is not None else None, error)
        time.sleep(wait)


class _RetryingAdapter(DeadlineAdapter):
    """Starts the call's deadline and builds a fresh deadline-bounded Retry for each request
    (keep-alive is kept across requests)."""

    def __init__(self, config: ImdsConfig) -> None:
        super().__init__(Deadline(config.deadline), max_retries=0, pool_connections=1, pool_maxsize=1)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        retry = _DeadlineRetry(
            total=20,
            connect=20,
            read=20,
            status=20,
            redirect=0,
            other=0,
            allowed_methods=frozenset({"GET", "POST"}),  # approvals are idempotent
            status_forcelist=RETRY_STATUSES,
            backoff_factor=0.25,
            backoff_max=5.0,
            backoff_jitter=0.25,
            respect_retry_after_header=True,
            raise_on_status=False,  # we want the last status and body for the error
        )
        self.deadline.start()
        retry.deadline = self.deadline.at
        self.max_retries = retry
        return super().send(request, **kwargs)


class ImdsClient:
    """Talks to IMDS at ``config.endpoint``. Not thread-safe (one per run or daemon)."""

    def __init__(self, config: ImdsConfig) -> None:
        self.config = config
        self._session = requests.Session()
        self._session.trust_env = False  # never a proxy, never .netrc: IMDS is link-local
        self._session.proxies = {}
        adapter = _RetryingAdapter(config)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._deadline = adapter.deadline  # started by each request; the body is read within it too
        self.requests_made = 0
        self.last_etag: str | None = None
        # The last scheduled events answer (its ETag, if any; its body; its document). Where IMDS
        # offers an ETag, a long-lived client (the daemon) asks If-None-Match with it; IMDS is not
        # documented to send one, so a body byte for byte the same as the last one is taken for the
        # same document too (parsing a thousand events costs ~50 ms; comparing the bytes, microseconds).
        self._last_answer: tuple[str | None, bytes, EventsDocument] | None = None

    def close(self) -> None:
        self._session.close()

    @property
    def events_url(self) -> str:
        return f"{self.config.endpoint}/metadata/scheduledevents"

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str],
        body: bytes | None = None,
        if_none_match: str | None = None,
    ) -> bytes | None:
        """The body of a 200 answer, or None for a 304 (only with ``if_none_match``)."""
        headers = {"Metadata": "true", "x-ms-client-request-id": _request_id()}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if if_none_match:
            headers["If-None-Match"] = if_none_match
        shown = f"{url}?api-version={params.get('api-version', '')}"
        self.requests_made += 1
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                data=body,
                headers=headers,
                timeout=(self.config.connect_timeout, self.config.read_timeout),
                stream=True,
                allow_redirects=False,
            )
        except _DeadlineExceededError as exc:
            metrics.current.inc("imds_requests", {"status": "deadline"})
            limit = f"{self.config.deadline:g}s deadline"
            if exc.status is not None:
                message = f"IMDS kept answering HTTP {exc.status} until the {limit}"
            else:
                message = f"IMDS unreachable ({exc.error or 'no answer'}) until the {limit}"
            raise ImdsUnavailableError(message, url=shown, status=exc.status) from exc
        except requests.RequestException as exc:
            if self._deadline.passed():
                raise self._deadline_error(shown, exc) from exc
            metrics.current.inc("imds_requests", {"status": "error"})
            reason = type(exc).__name__
            raise ImdsUnavailableError(f"IMDS unreachable ({reason})", url=shown) from exc
        with response:
            try:
                payload = self._read_capped(response, shown)
            except requests.RequestException as exc:
                if self._deadline.passed():
                    raise self._deadline_error(shown, exc) from exc
                raise ImdsUnavailableError(
                    f"IMDS connection broke while reading ({type(exc).__name__})", url=shown
                ) from exc
        status = response.status_code
        metrics.current.inc("imds_requests", {"status": str(status)})
        self.last_etag = response.headers.get("ETag")
        if status == 200:
            return payload
        if status == 304 and if_none_match:
            return None
        detail = _error_text(payload)
        if status in RETRY_STATUSES:
            raise ImdsUnavailableError(
                f"IMDS kept failing until the deadline: {detail}", url=shown, status=status
            )
        raise ImdsHttpError("IMDS refused the request", url=shown, status=status, body=detail)

    def _deadline_error(self, shown: str, exc: Exception) -> ImdsUnavailableError:
        """The call ran out of time mid-exchange (a slow connect, or an answer still arriving)."""
        metrics.current.inc("imds_requests", {"status": "deadline"})
        return ImdsUnavailableError(
            f"IMDS request did not complete within the {self.config.deadline:g} s deadline ({_cause(exc)})",
            url=shown,
        )

    def _read_capped(self, response: requests.Response, shown: str) -> bytes:
        limit = self.config.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(chunk_size=65536):
            size += len(chunk)
            if size > limit:
                raise MalformedDocumentError(f"IMDS answer is larger than {limit} bytes", url=shown)
            chunks.append(chunk)
        return b"".join(chunks)

    def scheduled_events(self) -> EventsDocument:
        """GET the Scheduled Events document.

        Raises ImdsUnavailableError, ImdsHttpError, MalformedDocumentError.
        """
        url = self.events_url
        last = self._last_answer
        body = self._request(
            "GET",
            url,
            params={"api-version": self.config.api_version},
            if_none_match=last[0] if last else None,
        )
        if body is None and last is not None:
            return last[2]  # 304: unchanged since the last answer
        body = body or b""
        document = last[2] if last is not None and last[1] == body else parse_document(body, source=url)
        self._last_answer = (self.last_etag, body, document)
        return document

    def approve(self, event_ids: Sequence[str]) -> None:
        """POST StartRequests for ``event_ids`` (the events then start without waiting).

        Raises ImdsUnavailableError, ImdsHttpError.
        """
        payload = {"StartRequests": [{"EventId": event_id} for event_id in event_ids]}
        self._request(
            "POST",
            self.events_url,
            params={"api-version": self.config.api_version},
            body=json.dumps(payload).encode(),
        )

    def instance(self) -> InstanceInfo:
        """GET instance metadata and return this VM's identity.

        Raises ImdsUnavailableError, ImdsHttpError, MalformedDocumentError.
        """
        url = f"{self.config.endpoint}/metadata/instance"
        body = self._request("GET", url, params={"api-version": self.config.instance_api_version})
        try:
            raw = json.loads(body or b"")
        except RecursionError as exc:  # an answer nested beyond reason: metadata that failed
            raise MalformedDocumentError(
                "instance metadata is not JSON (nested too deeply)", url=url
            ) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedDocumentError(f"instance metadata is not JSON ({exc})", url=url) from exc
        return InstanceInfo.from_json(raw, source=url)


def _request_id() -> str:
    """A random (version 4) UUID, built by hand: ``uuid`` costs the idle run ~3 ms of imports."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _cause(exc: Exception) -> str:
    """What stopped the exchange, as urllib3 saw it (``ReadTimeoutError``, ``ConnectTimeoutError``,
    ...): requests wraps it, and urllib3's retry wraps it again."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], Exception) else exc
    if isinstance(inner, MaxRetryError) and inner.reason is not None:
        inner = inner.reason
    return type(inner).__name__


def _error_text(payload: bytes) -> str:
    """The ``error`` of an IMDS error body (``{"error": "..."}``), or a short excerpt."""
    text = payload[:500].decode("utf-8", "replace")
    try:
        decoded = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return text.strip()
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return str(decoded["error"])
    return text.strip()
