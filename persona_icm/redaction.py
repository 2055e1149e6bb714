"""The one place that removes secrets from text quoted out of a request or a response.

Every text an error, a log line or a result quotes from an HTTP exchange goes through `redact`:
each given secret (the API key) is replaced wherever it appears, and so is the value of every
`Authorization`, `Proxy-Authorization`, `api-key` / `x-api-key` header or field, in any spelling an
echoed body may use (a header line, JSON, a Python repr, a query string, JSON inside a JSON string).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"

_CREDENTIAL = re.compile(
    r"""(?ix)
    \b((?:proxy-)?authorization|(?:x-)?api[-_]?key)   # the header or field name
    ([\\"']*\s*[:=]\s*[\\"']*)                        # its separator, quotes (also escaped ones)
    ((?:bearer|basic|token)\s+)?+                     # an auth scheme stays readable
    (?!\[redacted\])[^\s\\"',;&}\]]+                  # the value (once)
    """
)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every secret and every credential header value replaced by [redacted]."""
    text = _CREDENTIAL.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}{REDACTED}", text)
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
