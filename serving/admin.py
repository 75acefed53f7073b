"""Admin authentication: one bearer token, from `KDCANARY_ADMIN_TOKEN` or the file named by
`KDCANARY_ADMIN_TOKEN_FILE` (read on every call, so a rotated file takes effect at once).
With neither configured every admin call is refused and the answer says why. Tokens are
compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from serving.errors import AdminAuthError

TOKEN_ENV = "KDCANARY_ADMIN_TOKEN"
TOKEN_FILE_ENV = "KDCANARY_ADMIN_TOKEN_FILE"


def configured_token(env: Mapping[str, str] | None = None) -> str | None:
    """The admin token, or None when neither variable names a non-empty one."""
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = env.get(TOKEN_FILE_ENV, "").strip()
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def authorize(header: str | None, env: Mapping[str, str] | None = None) -> None:
    """Raise AdminAuthError unless `header` is `Bearer <the configured token>`."""
    token = configured_token(env)
    if token is None:
        raise AdminAuthError(
            f"admin API disabled: no token configured (set {TOKEN_ENV} or {TOKEN_FILE_ENV} on the cluster)"
        )
    if not header:
        raise AdminAuthError("missing Authorization header (expected 'Bearer <token>')")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise AdminAuthError("malformed Authorization header (expected 'Bearer <token>')")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise AdminAuthError("invalid admin token")
