"""What each service's OpenAPI document says about request bodies and errors.

The handlers read their bodies raw (images, OIP v2 tensors, Alertmanager's webhook) for
speed and for their own clear errors, so FastAPI cannot see a body to document: routes pass
`openapi_extra=request_body(...)` instead. Every error answers in the shared shape, which
`errors(...)` declares for the statuses a route can give, so a client or a fuzzer knows what
to expect and a response outside the document is a bug.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "kind"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, and what to do."},
        "kind": {"type": "string", "description": "A fixed snake_case name."},
        "stage": {"type": "string", "description": "Where it went wrong."},
    },
}

_MEANING = {
    400: "The request is malformed (the error says what and where).",
    401: "A missing or wrong bearer token.",
    404: "No such model or resource.",
    413: "The body is over the service's limit.",
    415: "A media type the route does not take.",
    422: "A well-formed request with a value the service cannot use.",
    431: "The request's headers are over the service's bound.",
    500: "A fault injected for a lab (never otherwise: a bug).",
    502: "A service behind this one answered badly.",
    503: "Not ready, at its limit of requests in flight (Retry-After), or a service behind "
    "it is unavailable.",
    504: "A service behind this one did not answer in time.",
}

# What any route can answer besides its own errors: headers refused, shed under load or not
# ready (servescope.runtime.admission).
ALWAYS = (431, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these statuses (plus 503), each in the shared error shape."""
    return {
        status: {
            "description": _MEANING[status],
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in sorted({*statuses, *ALWAYS})
    }


def request_body(content: dict[str, dict[str, Any]], description: str) -> dict[str, Any]:
    """FastAPI `openapi_extra=` declaring a required body: media type -> schema."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {media: {"schema": schema} for media, schema in content.items()},
        }
    }
