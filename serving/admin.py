"""Bearer tokens: one for the admin API, another for feedback (a forged label can steer a
rollout, yet the backend that sends labels should not be able to promote or roll back), and
one that lets a predict request choose its model (X-Kdcanary-Variant, for QA and support).

Each comes from its variable or the file its `_FILE` variable names (read on every call, so a
rotated file takes effect at once): `KDCANARY_ADMIN_TOKEN[_FILE]`,
`KDCANARY_FEEDBACK_TOKEN[_FILE]` and `KDCANARY_FORCE_TOKEN[_FILE]`. With neither configured
every call is refused and the answer says why. Tokens are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serving.errors import AdminAuthError


@dataclass(frozen=True)
class Credential:
    """Which token guards what: its name in messages and the variables that configure it."""

    what: str
    env: str
    file_env: str


ADMIN = Credential("admin API", "KDCANARY_ADMIN_TOKEN", "KDCANARY_ADMIN_TOKEN_FILE")
FEEDBACK = Credential("feedback", "KDCANARY_FEEDBACK_TOKEN", "KDCANARY_FEEDBACK_TOKEN_FILE")
FORCE = Credential("forced variant", "KDCANARY_FORCE_TOKEN", "KDCANARY_FORCE_TOKEN_FILE")
TOKEN_ENV, TOKEN_FILE_ENV = ADMIN.env, ADMIN.file_env


def configured_token(env: Mapping[str, str] | None = None, credential: Credential = ADMIN) -> str | None:
    """The token, or None when neither variable names a non-empty one."""
    env = os.environ if env is None else env
    token = env.get(credential.env, "").strip()
    if token:
        return token
    path = env.get(credential.file_env, "").strip()
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def authorize(header: str | None, env: Mapping[str, str] | None = None, credential: Credential = ADMIN) -> None:
    """Raise AdminAuthError unless `header` is `Bearer <the configured token>`."""
    token = configured_token(env, credential)
    if token is None:
        raise AdminAuthError(
            f"{credential.what} disabled: no token configured (set {credential.env} or {credential.file_env} "
            "on the cluster)"
        )
    if not header:
        raise AdminAuthError("missing Authorization header (expected 'Bearer <token>')")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise AdminAuthError("malformed Authorization header (expected 'Bearer <token>')")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise AdminAuthError(f"invalid {credential.what} token")
