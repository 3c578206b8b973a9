"""Reading request bodies with a hard size limit, before the bytes pile up in memory."""

from __future__ import annotations

from fastapi import Request

from servescope.runtime.errors import ServiceError


async def read_body(request: Request, limit: int, stage: str) -> bytes:
    """The whole body, or a 413 as soon as it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused before reading anything; a chunked
    body is counted as it streams in and refused at the first byte past the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(
            413,
            "body_too_large",
            f"request body of {declared} bytes exceeds the limit of {limit} bytes",
            stage,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(
                413, "body_too_large", f"request body exceeds the limit of {limit} bytes", stage
            )
        chunks.append(chunk)
    return b"".join(chunks)
