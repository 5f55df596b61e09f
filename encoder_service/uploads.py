"""The image bytes of an ``/encode`` request, never more than the upload limit.

Both ways of sending the image read the body through the one bounded reader,
``services.serving.http.read_body``: refused from ``Content-Length`` before
reading, and while streaming at the first byte over the limit (a chunked body
has no length). A multipart body may be ``MULTIPART_OVERHEAD`` larger than the
limit (boundaries, part headers, small fields) and is parsed from the buffered
bytes afterwards, so no multipart part is ever read past the limit.
"""

from __future__ import annotations

from fastapi import Request
from starlette.formparsers import MultiPartException, MultiPartParser

from services.errors import ImageTooLargeError, UnsupportedMediaError
from services.imaging import ACCEPTED_CONTENT_TYPES
from services.serving.errors import InvalidRequestError
from services.serving.http import read_body
from services.serving.metrics import ServiceMetrics

MULTIPART_OVERHEAD = 64 * 1024  # bytes a multipart body may carry beyond the image itself


async def read_upload(request: Request, max_bytes: int, metrics: ServiceMetrics) -> bytes:
    """The uploaded image file: the raw body, or the multipart field ``image``; 413 over ``max_bytes``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = content_type == "multipart/form-data"
    if not multipart and content_type not in ACCEPTED_CONTENT_TYPES and not content_type.startswith("image/"):
        raise UnsupportedMediaError(
            f"send the image as its own content type (image/png, image/jpeg, ...) or multipart/form-data, "
            f"not {content_type or 'no content type'}")
    try:
        if multipart:
            try:
                body = await read_body(request, max_bytes + MULTIPART_OVERHEAD, too_large=ImageTooLargeError)
            except ImageTooLargeError:
                raise ImageTooLargeError(f"multipart upload is over the {max_bytes}-byte image limit (plus "
                                         f"{MULTIPART_OVERHEAD} bytes for the form)") from None
            data = await _multipart_image(request, body)
        else:
            data = await read_body(request, max_bytes, too_large=ImageTooLargeError)
        if len(data) > max_bytes:
            raise ImageTooLargeError(f"upload is {len(data)} bytes; the limit is {max_bytes}")
    except ImageTooLargeError:
        metrics.rejected("too_large")
        raise
    return data


async def _multipart_image(request: Request, body: bytes) -> bytes:
    async def replay():
        yield body

    try:
        form = await MultiPartParser(request.headers, replay(), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise InvalidRequestError(f"malformed multipart/form-data body: {exc.message}") from None
    try:
        field = form.get("image")
        if field is None or isinstance(field, str):
            raise InvalidRequestError("multipart upload needs the image file in the form field `image`")
        return await field.read()
    finally:
        await form.close()
