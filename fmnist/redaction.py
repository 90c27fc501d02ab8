"""Credentials kept out of what is shown: a URI's user info (`user:password@`) never reaches a log line or an
error message, which end up in CI logs. Clients authenticate with environment variables
(MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, PGPASSWORD) or ~/.netrc, not the URI."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

# scheme://userinfo@ : userinfo stops at the first '/', so a path holding '@' is left alone.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` with the user info of every URI in it replaced by `***`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def has_credentials(uri: str) -> bool:
    parts = urlsplit(uri)
    return bool(parts.scheme and parts.netloc and (parts.username or parts.password))
