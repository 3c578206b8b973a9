"""Bearer tokens for the endpoints that must not be open: admin faults, the alert webhook."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from servescope.runtime.errors import ServiceError


class BearerToken:
    """Checks `Authorization: Bearer <token>` in constant time.

    Both sides are hashed first, so the comparison takes as long whatever the length or the
    first wrong byte of what was sent. A refusal is a 401 of kind `unauthorized`, which the
    error handlers count in servescope_rejected_inputs_total like any other refused request.
    """

    def __init__(self, token: str, needed_for: str) -> None:
        self._digest = hashlib.sha256(f"Bearer {token}".encode()).digest()
        self.needed_for = needed_for

    def check(self, request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(hashlib.sha256(given).digest(), self._digest):
            raise ServiceError(401, "unauthorized", f"{self.needed_for} need the bearer token")
