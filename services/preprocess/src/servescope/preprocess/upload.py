"""Getting the image bytes out of a request body: a raw image or a multipart upload."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from servescope.runtime.errors import ServiceError

RAW_IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg"}
ACCEPTED = "image/png, image/jpeg, or multipart/form-data with one image file"


def _unsupported(message: str) -> ServiceError:
    return ServiceError(415, "unsupported_media_type", message, stage="decode")


def extract_image(body: bytes, content_type: str | None) -> bytes:
    """The image bytes of a request, or a 415 saying which content types are accepted."""
    if not content_type:
        raise _unsupported(f"missing Content-Type; send {ACCEPTED}")
    media_type, options = parse_options_header(content_type)
    media = media_type.decode("latin-1").lower()
    if media in RAW_IMAGE_TYPES:
        return body
    if media == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise ServiceError(
                422, "invalid_multipart", "multipart body without a boundary", stage="decode"
            )
        return _first_file_part(body, boundary)
    raise _unsupported(f"Content-Type {media} is not accepted; send {ACCEPTED}")


# An upload is one image with perhaps a few form fields. Parsing runs on the event loop, so
# a body of thousands of tiny parts (20,000 took 0.2 s per MB) would stall every request.
MAX_PARTS = 16


class _TooManyParts(Exception):
    pass


def _first_file_part(body: bytes, boundary: bytes) -> bytes:
    """The first part that carries a file (has a filename or an image content type)."""
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        if len(parts) == MAX_PARTS:
            raise _TooManyParts
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1][0][bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except _TooManyParts:
        raise ServiceError(
            422,
            "invalid_multipart",
            f"the multipart body has more than {MAX_PARTS} parts; send one image file",
            stage="decode",
        ) from None
    except Exception as exc:  # python-multipart raises several untyped errors on bad input
        raise ServiceError(
            422, "invalid_multipart", f"the multipart body cannot be parsed: {exc}", stage="decode"
        ) from exc
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition"))
        part_type, _ = parse_options_header(headers.get(b"content-type"))
        part_media = part_type.decode("latin-1").lower()
        if b"filename" in disposition or part_media.startswith("image/"):
            if part_media and part_media not in RAW_IMAGE_TYPES | {"application/octet-stream"}:
                raise _unsupported(f"uploaded file has Content-Type {part_media}; send {ACCEPTED}")
            return bytes(data)
    raise ServiceError(
        422, "missing_file", "the multipart body has no file part; attach the image", "decode"
    )
