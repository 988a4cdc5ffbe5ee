"""Endpoint URLs drainer sends requests (and bearer tokens) to, checked so that every parser agrees
on the host: the one that validates (``urllib.parse``) and the one that connects (urllib3).

They disagree on userinfo, backslashes and odd characters (``http://evil\\@127.0.0.1/`` is
127.0.0.1 to ``urlsplit`` and evil to urllib3), so those are refused outright: an endpoint is
``scheme://host[:port][/path]`` with a DNS name, an IPv4 address or a bracketed IPv6 address.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_HOST_PORT = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?"
    r"|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable http(s) endpoint, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    if any(c == "\\" or c.isspace() or not c.isprintable() for c in url):
        return "contains a backslash, whitespace or a control character"
    if "@" in parts.netloc:
        return "must not contain userinfo (user@): the token would be sent where the parsers disagree"
    host_port = _HOST_PORT.fullmatch(parts.netloc)
    if host_port is None or not parts.hostname:
        return "the host must be a DNS name, an IPv4 or a bracketed IPv6 address, and an optional port"
    port = host_port.group("port")
    if port and not 0 < int(port) < 65536:
        return "the port must be between 1 and 65535"
    if parts.fragment or not (_PATH.fullmatch(parts.path) and _PATH.fullmatch(parts.query)):
        return "must be scheme://host[:port][/path][?query] without a fragment or unusual characters"
    return None
