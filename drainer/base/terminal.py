"""Text from outside (IMDS, ARM, hooks) made safe for a terminal: control characters (escape
sequences start with one), Unicode format characters (bidi overrides) and lone surrogates are
shown as ``\\xNN`` / ``\\uNNNN`` instead of being sent raw."""

from __future__ import annotations

import unicodedata

_SAFE = {"\t"}


def printable(text: str) -> str:
    """``text`` with every character a terminal would interpret written as a Python-style escape."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char in _SAFE or unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"):
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)
