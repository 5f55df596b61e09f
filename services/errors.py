"""Domain errors shared by the codec stages and both services.

Each error carries a message a client can act on. The HTTP layer maps them to
status codes in one place (``services.serving.http``); in-process callers catch
them directly.
"""

from __future__ import annotations


class CodecError(Exception):
    """Base class of every error this package raises on purpose."""


class BitstreamError(CodecError, ValueError):
    """A payload (or one of its coded bodies) is malformed, truncated or out of range."""


class ProfileMismatchError(CodecError):
    """A payload names a model profile this decoder does not serve."""


class ImageInputError(CodecError, ValueError):
    """An input image cannot be read, is too large, or has an unsupported format."""


class ImageTooLargeError(ImageInputError):
    """An input image exceeds the configured byte or pixel limits."""


class UnsupportedMediaError(ImageInputError):
    """An upload is not an image type the encoder accepts."""


class ModelUnavailableError(CodecError):
    """Weights or a model a stage needs cannot be loaded (missing file, offline hub)."""


class DecodeOutOfMemoryError(CodecError):
    """A single decode job does not fit in accelerator memory even alone (after splitting)."""

    retry_after_s = 30.0  # capacity, not the request: another decoder or a later try may fit it


class DecodeInterruptedError(CodecError):
    """A running batch was stopped between diffusion steps (its clients left, or the drain ran out of time)."""


class EncodeCancelledError(CodecError):
    """The encode was stopped because its client went away (PEZ checks at every step)."""
