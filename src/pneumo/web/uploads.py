"""Uploaded files: kept in memory, named safely, screened by name before decoding.

Nothing a client sends is ever written to disk: not by Flask (``InMemoryRequest``),
and not by waitress, whose spooling threshold ``web/server.py`` raises above the
body limit. The file's *content* decides
its format (``pneumo.imaging``); the name is only checked against an
allow-list of extensions as a second gate (OWASP), case-insensitively on
purpose, and a name without extension is allowed because DICOM exports often
have none. The name itself is only echoed back cleaned and, on the page,
always inserted as text, never as HTML.
"""

from __future__ import annotations

import dataclasses
import io
import unicodedata

from flask import Request, request

from ..data import IMAGE_SUFFIXES
from .errors import MISSING_FILE, UNSUPPORTED_TYPE

#: Extensions a file name may end with (compared lower-case): those a folder of images is
#: searched for, so the server takes what ``pneumo predict`` and training take.
ALLOWED_EXTENSIONS = tuple(sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES))
#: Longest file name echoed back, in characters.
MAX_NAME_CHARS = 120


class InMemoryRequest(Request):
    """A request whose uploaded files live in memory (Flask's default spools files
    over 500 kB to a temporary file). ``MAX_CONTENT_LENGTH`` bounds the size."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        return io.BytesIO()


@dataclasses.dataclass
class Upload:
    name: str  # cleaned, for display only
    data: bytes


def clean_name(filename: str | None) -> str:
    """The last path component, without control characters, at most MAX_NAME_CHARS."""
    name = unicodedata.normalize("NFC", filename or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 1] + "\u2026"
    return name


def check_extension(name: str) -> None:
    """ApiError 415 unless ``name`` has no extension or an allowed one."""
    if "." not in name:
        return
    extension = name.rsplit(".", 1)[-1].lower()
    if extension not in ALLOWED_EXTENSIONS:
        raise UNSUPPORTED_TYPE(
            f"files ending in .{extension[:16]} are not accepted; send a PNG, "
            "JPEG or DICOM chest X-ray")


def uploaded_files(field: str = "file") -> list:
    """The ``FileStorage`` parts named ``field``; ApiError 400 if there are none."""
    files = request.files.getlist(field)
    if not files:
        others = sorted(request.files)
        hint = f" (found {', '.join(repr(n[:40]) for n in others[:5])})" if others else ""
        raise MISSING_FILE(
            f"no file was sent: upload it as multipart/form-data field '{field}'{hint}")
    return files


def read_upload(storage) -> Upload:
    """A part's bytes and cleaned name; ApiError 400 without a file name, 415 for a refused one."""
    name = clean_name(storage.filename)
    if not storage.filename or not name:
        raise MISSING_FILE("a file part has no file name: no file was chosen")
    check_extension(name)
    return Upload(name=name, data=storage.read())
