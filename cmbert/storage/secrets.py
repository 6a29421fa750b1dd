"""Credentials never leave the process: metadata keys and values that name or hold one are dropped, and messages
have the live AWS secret values replaced by ``***``."""

from __future__ import annotations

import json
import os
import re

# A metadata key is dropped when one of its words (split on non-letters and camelCase) names a credential.
SECRET_KEY_RE = re.compile(
    r"(^|_)(secret|secrets|password|passwd|token|tokens|credential|credentials|api_?key|access_?key|private_?key"
    r"|auth|authorization|signature)(_|$)"
)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def is_secret_key(key: str) -> bool:
    """Whether a metadata key names a credential (``aws_secret_access_key``, ``hfToken``; not ``tokenizer``)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key))
    words = re.sub(r"[^a-zA-Z0-9]+", "_", words).lower().strip("_")
    return bool(SECRET_KEY_RE.search(words))


def _scrub(value):
    """A copy of a JSON-like value with credential-named keys removed at any depth."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not is_secret_key(k)}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def safe_metadata(metadata: dict | None) -> dict[str, str]:
    """File metadata with anything that looks like a credential removed.

    Keys naming a credential are dropped at any depth of a nested value, and so is any entry whose text
    contains the current AWS secret key, session token or access key id.
    """
    live = [v for v in (os.environ.get(var) for var in SECRET_ENV) if v and len(v) >= 4]
    out = {}
    for key, value in (metadata or {}).items():
        if is_secret_key(key):
            continue
        if isinstance(value, str):
            text = value
            try:  # a JSON document (e.g. a resolved config) is scrubbed inside as well
                parsed = json.loads(value)
                if isinstance(parsed, (dict, list)):
                    text = json.dumps(_scrub(parsed), sort_keys=True, default=str)
            except ValueError:
                pass
        else:
            text = json.dumps(_scrub(value), sort_keys=True, default=str)
        if any(secret in text for secret in live):
            continue
        out[str(key)] = text
    return out


def redact(text: str) -> str:
    """Remove credential values from a message and keep it on one line."""
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return " ".join(text.split())
