"""URIs as modelyard writes them: never a credential (userinfo, query string) in the clear. Pure.

``redact(uri)`` is for one URI; ``scrub(text)`` finds every URI in a free-form text (an error
message, a log line) and redacts each. Everything modelyard writes for others to read (status,
Events, logs, termination messages, manifests) goes through one of them.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"
# scheme://anything-up-to-whitespace-or-quote
_URI_IN_TEXT = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+)")
# userinfo: what comes before '@' in the authority (before the first '/', '?' or '#')
USERINFO = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@"


def redact(uri: str) -> str:
    """The URI without its userinfo (user kept, password or token-only userinfo redacted) and
    with its query replaced by ``<redacted>`` (presigned URLs carry their signature there)."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # not a URI at all (e.g. an unbalanced '['): redact the tail wholesale
        return uri.split("?", 1)[0].split("@", 1)[-1]
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _password = userinfo.partition(":")
        # "user:password@" keeps the user; a lone "TOKEN@" is all secret
        netloc = f"{user}:{REDACTED}@{host}" if sep else f"{REDACTED}@{host}"
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def scrub(text: str) -> str:
    """``text`` with every URI in it redacted."""
    if not text or "://" not in text:
        return text
    return _URI_IN_TEXT.sub(lambda m: redact(m.group(1)), text)


def has_userinfo(uri: str) -> bool:
    return re.match(USERINFO, uri or "") is not None
