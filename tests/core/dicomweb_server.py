"""A minimal DICOMweb server over local DICOM files, for offline tests of the dicomweb reader.

It serves what wsidicom's web client asks for, under a path prefix:

- QIDO-RS ``GET {prefix}/studies/{study}/instances?...``: the instances of the study, filtered
  by the ``SeriesInstanceUID`` / ``SOPClassUID`` / ``Modality`` parameters (tags as hex),
  each with its ``AvailableTransferSyntaxUID`` (the stored one: nothing is transcoded);
- WADO-RS ``GET .../series/{series}/instances/{instance}/metadata``: the header as DICOM JSON
  (without the pixel data);
- WADO-RS ``GET .../instances/{instance}/frames/{1,2,...}``: the stored frames as
  ``multipart/related``; 406 when the ``Accept`` header asks for another transfer syntax.

Every request's path and headers are recorded (:attr:`DicomWebServer.requests`); with
``token=`` set, a request without ``Authorization: Bearer <token>`` gets 401.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom
from pydicom.encaps import generate_frames

#: Request parameters (tags as hex) the search honours.
_FILTERS = {"0020000E": "SeriesInstanceUID", "00080016": "SOPClassUID", "00080060": "Modality"}


class _Instance:
    """One stored DICOM file: its UIDs, header as DICOM JSON, and frames."""

    def __init__(self, path: Path) -> None:
        self.dataset = pydicom.dcmread(path)
        ds = self.dataset
        self.study, self.series, self.uid = (
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
        )
        self.transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        self.metadata = pydicom.dcmread(path, stop_before_pixels=True).to_json_dict()
        count = int(getattr(ds, "NumberOfFrames", 1))
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            self.frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        else:
            size = len(ds.PixelData) // count
            self.frames = [bytes(ds.PixelData[i * size : (i + 1) * size]) for i in range(count)]

    def search_result(self) -> dict:
        ds = self.dataset
        result = {
            keyword: ds[keyword].to_json_dict(None, 0)
            for keyword in (
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID",
                "SOPClassUID",
                "Modality",
            )
        }
        named = {pydicom.datadict.tag_for_keyword(k): v for k, v in result.items()}
        found = {f"{tag:08X}": value for tag, value in named.items()}
        found["00083002"] = {"vr": "UI", "Value": [self.transfer_syntax]}
        return found

    def frame(self, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: encapsulated bytes or raw pixels."""
        if not 1 <= number <= len(self.frames):
            raise KeyError(number)
        return self.frames[number - 1]


class DicomWebServer:
    """DICOMweb over the DICOM files of ``folders``, on ``127.0.0.1`` in a thread.

    Use as a context manager; :attr:`base` is the service URL (``http://127.0.0.1:PORT/PREFIX``).
    """

    def __init__(
        self, folders: Iterable[Path], prefix: str = "dicomweb", token: str | None = None
    ) -> None:
        self.instances = {
            inst.uid: inst
            for folder in folders
            for inst in (_Instance(f) for f in sorted(Path(folder).glob("*.dcm")))
        }
        self.prefix = "/" + prefix.strip("/")
        self.token = token
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def base(self) -> str:
        """The service's base URL (what precedes ``/studies/...``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    def __enter__(self) -> DicomWebServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                    return self._send(401, "text/plain", b"missing or wrong bearer token")
                url = urlsplit(self.path)
                if not url.path.startswith(server.prefix + "/"):
                    return self._send(404, "text/plain", b"no such service")
                route = url.path[len(server.prefix) :]
                if match := re.fullmatch(r"/studies/([\d.]+)/instances", route):
                    return self._search(match[1], parse_qs(url.query))
                match = re.fullmatch(
                    r"/studies/([\d.]+)/series/([\d.]+)/instances/([\d.]+)/(metadata|frames/[\d,]+)",
                    route,
                )
                instance = server.instances.get(match[3]) if match else None
                if instance is None or (instance.study, instance.series) != (match[1], match[2]):
                    return self._send(404, "text/plain", b"not found")
                if match[4] == "metadata":
                    body = json.dumps([instance.metadata]).encode()
                    return self._send(200, "application/dicom+json", body)
                numbers = [int(n) for n in match[4].split("/")[1].split(",")]
                return self._frames(instance, numbers)

            def _search(self, study: str, query: dict[str, list[str]]) -> None:
                found = [i for i in server.instances.values() if i.study == study]
                for tag, keyword in _FILTERS.items():
                    wanted = {v for value in query.get(tag, []) for v in value.split(",")}
                    if wanted:
                        found = [i for i in found if str(i.dataset[keyword].value) in wanted]
                body = json.dumps([i.search_result() for i in found]).encode()
                self._send(200, "application/dicom+json", body)

            def _frames(self, instance: _Instance, numbers: list[int]) -> None:
                accept = self.headers.get("Accept", "")
                asked = re.findall(r"transfer-syntax=([\d.]+)", accept)
                if asked and instance.transfer_syntax not in asked:
                    return self._send(406, "text/plain", b"no transcoding here")
                media = (
                    "image/jpeg"
                    if instance.dataset.file_meta.TransferSyntaxUID.is_encapsulated
                    else "application/octet-stream"
                )
                try:
                    frames = [instance.frame(n) for n in numbers]
                except KeyError:
                    return self._send(404, "text/plain", b"no such frame")
                boundary = uuid.uuid4().hex
                part_head = (
                    f"--{boundary}\r\nContent-Type: {media}; "
                    f"transfer-syntax={instance.transfer_syntax}\r\n\r\n"
                ).encode()
                body = b"".join(part_head + frame + b"\r\n" for frame in frames)
                body += f"--{boundary}--\r\n".encode()
                content_type = f'multipart/related; type="{media}"; boundary={boundary}'
                self._send(200, content_type, body)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
