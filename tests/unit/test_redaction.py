"""redact()/scrub(): what modelyard writes never carries userinfo or a query string."""
from __future__ import annotations

import pytest

from modelyard.uri import redact, scrub


@pytest.mark.parametrize("uri,want", [
    ("https://TOKEN@h/x", "https://<redacted>@h/x"),                     # a token alone is all secret
    ("https://user:pass@h/x", "https://user:<redacted>@h/x"),
    ("https://h/x?X-Amz-Signature=abc&a=1", "https://h/x?<redacted>"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("hf://org/repo", "hf://org/repo"),
    ("https://h/x#frag", "https://h/x"),
])
def test_redact(uri, want):
    assert redact(uri) == want


def test_scrub_finds_every_uri_in_a_text():
    text = 'GET https://u:SECRET@h/a?sig=SECRET2 failed; retried "http://TOKEN3@h2/b" (x)'
    out = scrub(text)
    assert "SECRET" not in out and "TOKEN3" not in out
    assert out.startswith("GET https://u:<redacted>@h/a?<redacted> failed") and "http://<redacted>@h2/b" in out
    assert scrub("no uri here: 3 files") == "no uri here: 3 files"
