"""Request ids that carry what was answered: signed receipts, so labels can come back later.

A router answers `POST /v1/predict` with a `request_id` that is a receipt: which variant
answered, its top-1 label ids, the routing version (the stage epoch), the model pair, when,
and a random nonce, signed with an HMAC key that every router replica and the controller share.
Feedback (`POST /v1/feedback`, minutes or hours later, on any replica, after restarts) is
joined by opening the receipt: no shared table of answers, no memory that grows with traffic.
Only shadowed requests, a small fraction, have a second answer the receipt cannot hold (the
shadow call runs after the response is sent); the controller keeps those, keyed by the nonce,
until they expire (rollout/store.py).

Format: base64url(JSON [version, issued_at, pair tag, routing version, variant, labels,
nonce, segment]) "." base64url(first 16 bytes of HMAC-SHA256). A receipt cannot be forged or altered
without the key, and it is opaque to clients by convention only: it holds no secret.

The key is the controller's: `load_or_create_key` makes it once under the state directory
(32 random bytes, mode 0600) and routers fetch it from the controller.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollout.errors import UnknownRequestError
from rollout.evidence import Variant

FORMAT = 1
TAG_BYTES = 16
MAX_REQUEST_ID_CHARS = 1024


class Receipt(BaseModel):
    """What a request id says about its answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issued_at: float  # wall-clock seconds
    pair: str  # `pair_tag` of the teacher and student the routing named
    version: int = Field(ge=0)  # the routing version the answer was served under
    served: Variant
    labels: tuple[int, ...]  # the served answer's top-1 label id, per input
    nonce: str = Field(min_length=1, max_length=64)
    segment: str | None = None  # the request's segment (declared, or "other"), when the spec declares any


def pair_tag(teacher_id: str | None, student_id: str | None) -> str:
    """A short digest naming a model pair inside receipts."""
    return hashlib.sha256(f"{teacher_id}/{student_id}".encode()).hexdigest()[:8]


def new_nonce() -> str:
    return secrets.token_hex(12)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ReceiptSigner:
    """Signs receipts into request ids and opens request ids back into receipts."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a receipt key needs at least 16 bytes")
        self._key = key

    def _tag(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:TAG_BYTES])

    def sign(self, receipt: Receipt) -> str:
        fields = [FORMAT, round(receipt.issued_at, 3), receipt.pair, receipt.version]
        fields += [receipt.served.value, list(receipt.labels), receipt.nonce, receipt.segment]
        body = _b64(json.dumps(fields, separators=(",", ":")).encode())
        return f"{body}.{self._tag(body)}"

    def open(self, request_id: str) -> Receipt:
        """The receipt a request id carries; UnknownRequestError when this key did not sign it."""
        body, _, tag = request_id.partition(".")
        if len(request_id) > MAX_REQUEST_ID_CHARS or not hmac.compare_digest(tag, self._tag(body)):
            raise UnknownRequestError(f"request_id {_shown(request_id)}: not issued by this deployment")
        try:
            version, issued_at, pair, routing, served, labels, nonce, segment = json.loads(_unb64(body))
            if version != FORMAT:
                raise ValueError(f"format {version}")
            fields = {"issued_at": issued_at, "pair": pair, "version": routing, "served": served}
            return Receipt(**fields, labels=labels, nonce=nonce, segment=segment)
        except (ValueError, TypeError, ValidationError) as exc:  # signed by us, yet unreadable: another format
            raise UnknownRequestError(f"request_id {_shown(request_id)}: unreadable receipt ({exc})") from exc


def _shown(request_id: str) -> str:
    return repr(request_id if len(request_id) <= 24 else request_id[:21] + "...")


def load_or_create_key(path: Path) -> bytes:
    """The key stored at `path`, made (32 random bytes, hex, mode 0600) when there is none yet."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile by another process: theirs wins
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(descriptor, "w") as file:
        file.write(key.hex())
    return key
