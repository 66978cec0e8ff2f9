"""DICOMweb URLs for the ``dicom`` reader: one series of a study on a DICOMweb server (a PACS).

A slide is named by the URL of its series on the server, with ``dicomweb+`` in front of the
scheme::

    dicomweb+https://HOST[:PORT]/PREFIX/studies/STUDY_UID/series/SERIES_UID

``https://HOST/PREFIX`` is the service root (what precedes ``/studies`` in the server's
QIDO-RS and WADO-RS URLs). wsidicom finds the series' instances (QIDO-RS), reads their headers
(WADO-RS metadata) and then fetches only the frames a region covers (WADO-RS frames), in the
stored transfer syntax when the server offers it.

A server that needs a login takes a bearer token (OAuth 2.0, e.g. Google Cloud Healthcare's
``gcloud auth print-access-token``) from the environment variable ``HISTOBAG_DICOMWEB_TOKEN``;
it is sent as ``Authorization: Bearer <token>`` with every request, and never recorded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from histobag.errors import SlideOpenError
from histobag.optional import require

__all__ = [
    "SCHEMES",
    "TOKEN_ENV",
    "DicomWebSeries",
    "is_dicomweb_url",
    "open_dicomweb",
    "parse_dicomweb_url",
]

#: URL schemes of DICOMweb series: the service's own scheme with ``dicomweb+`` in front.
SCHEMES = ("dicomweb+http", "dicomweb+https")

#: Environment variable holding a bearer token for the DICOMweb server (optional).
TOKEN_ENV = "HISTOBAG_DICOMWEB_TOKEN"

_URL_FORM = "dicomweb+https://HOST/PREFIX/studies/STUDY_UID/series/SERIES_UID"
_UID = r"[0-9]+(?:\.[0-9]+)*"
_PATH = re.compile(rf"(?P<prefix>.*?)/studies/(?P<study>{_UID})/series/(?P<series>{_UID})/?")


@dataclass(frozen=True)
class DicomWebSeries:
    """A series on a DICOMweb server.

    Attributes:
        service: The service root, ``http(s)://host[:port][/prefix]``.
        study: StudyInstanceUID.
        series: SeriesInstanceUID.
    """

    service: str
    study: str
    series: str


def is_dicomweb_url(source: str) -> bool:
    """Whether ``source`` has a DICOMweb scheme (``dicomweb+http(s)://``)."""
    return source.split("://", 1)[0].lower() in SCHEMES if "://" in source else False


def parse_dicomweb_url(url: str) -> DicomWebSeries:
    """The service root and UIDs in a ``dicomweb+http(s)://`` series URL.

    Raises:
        SlideOpenError: ``url`` is not of the form
            ``dicomweb+https://HOST/PREFIX/studies/STUDY_UID/series/SERIES_UID``.
    """
    if not is_dicomweb_url(url):
        raise SlideOpenError(f"{url} is not a DICOMweb URL; expected {_URL_FORM}.")
    parts = urlsplit(url.split("+", 1)[1])
    match = _PATH.fullmatch(parts.path)
    if not parts.netloc or match is None or parts.query or parts.fragment:
        raise SlideOpenError(
            f"Cannot read the DICOMweb URL {url}: expected {_URL_FORM} (a series, with the "
            "study and series instance UIDs as dotted digits)."
        )
    service = f"{parts.scheme}://{parts.netloc}{match['prefix']}"
    return DicomWebSeries(service, match["study"], match["series"])


def _client(service: str) -> Any:
    """A wsidicom web client for ``service``, with the bearer token from the environment."""
    dicomweb_client = require("dicomweb_client", extra="dicom", purpose="DICOMweb slides")
    web = require("wsidicom.web", extra="dicom", purpose="DICOMweb slides")

    class FramesAsBytes(web.WsiDicomWebClient):
        # dicomweb-client yields each frame as a bytearray, which wsidicom's decoder of
        # uncompressed frames (pydicom) cannot take; JPEG decoders take either.
        def get_frames(self, *args: Any, **kwargs: Any) -> Any:
            return (bytes(frame) for frame in super().get_frames(*args, **kwargs))

    token = os.environ.get(TOKEN_ENV, "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = dicomweb_client.DICOMwebClient(service, headers=headers)
    # Retry busy servers (429/503/504) and dropped connections, but briefly: the default
    # (five tries, 2 s doubling) keeps an unreachable host waiting half a minute.
    client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=250)
    return FramesAsBytes(client)


def _why(exc: Exception, series: DicomWebSeries) -> str:
    """What went wrong opening ``series``, in words (never the token)."""
    requests = require("requests", extra="dicom", purpose="DICOMweb slides")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            told = "was refused" if os.environ.get(TOKEN_ENV, "").strip() else "is not set"
            return (
                f"the server refused access (HTTP {status}): set {TOKEN_ENV} to a bearer "
                f"token it accepts (the token {told})"
            )
        if status == 404:
            return (
                f"the server has no such resource (HTTP 404 for {exc.response.url}); check "
                "the service prefix before /studies and the UIDs"
            )
        return f"the server answered HTTP {status} for {exc.response.url}"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot reach {series.service} ({type(exc).__name__})"
    errors = require("wsidicom.errors", extra="dicom", purpose="DICOMweb slides")
    if isinstance(exc, errors.WsiDicomNotFoundError):
        return (
            f"series {series.series} of study {series.study} holds no whole-slide image "
            "(VL Whole Slide Microscopy) on the server"
        )
    return f"{type(exc).__name__}: {exc}"


def open_dicomweb(url: str) -> Any:
    """Open the DICOM WSI series at ``url`` (see the module) as a ``wsidicom.WsiDicom``.

    Raises:
        SlideOpenError: The URL is malformed, the server cannot be reached or refuses, or the
            series holds no whole-slide image.
        MissingDependencyError: wsidicom is not installed (``histobag[dicom]``).
    """
    series = parse_dicomweb_url(url)
    wsidicom = require("wsidicom", extra="dicom", purpose="The dicom slide reader")
    try:
        return wsidicom.WsiDicom.open_web(_client(series.service), series.study, series.series)
    except Exception as exc:  # requests', dicomweb-client's and wsidicom's errors
        raise SlideOpenError(
            f"Cannot open the DICOMweb slide {url}: {_why(exc, series)}."
        ) from None
