"""A read-only S3 endpoint on loopback serving a folder's files as the objects of one bucket, for benchmarks.

    python -m benchmarks.static_s3 FOLDER BUCKET PORT

It answers what a run that reads ``s3://BUCKET/KEY`` asks (HeadObject, GetObject with or without a Range) from
the file ``FOLDER/KEY``, and ignores the request's signature. moto, the tests' server, reads an object's whole
value for every ranged request (about 0.1 s per request on a 130 MB object, whatever the range), which makes a
run's time a measure of moto; this server reads only the range asked for, as object stores do.
"""

from __future__ import annotations

import email.utils
import hashlib
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def _handler(folder: Path, bucket: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for the client's
            # delayed ACK of the headers (40 ms a response).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _file(self) -> Path | None:
            path = unquote(urlsplit(self.path).path).lstrip("/")
            name, _, key = path.partition("/")
            file = folder / key
            return file if name == bucket and key and file.is_file() else None

        def _missing(self) -> None:
            body = b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>"
            self.send_response(404)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _common_headers(self, file: Path, length: int) -> None:
            stat = file.stat()
            etag = hashlib.md5(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
            self.send_header("Content-Length", str(length))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))

        def do_HEAD(self) -> None:
            file = self._file()
            if file is None:
                return self._missing()
            self.send_response(200)
            self._common_headers(file, file.stat().st_size)
            self.end_headers()

        def do_GET(self) -> None:
            file = self._file()
            if file is None:
                return self._missing()
            size = file.stat().st_size
            start, end = 0, size - 1
            asked = self.headers.get("Range")
            if asked:
                first, _, last = asked.removeprefix("bytes=").partition("-")
                start, end = (size - int(last), size - 1) if not first else (int(first), min(int(last or end), end))
            with file.open("rb") as f:
                f.seek(start)
                body = f.read(end - start + 1)
            self.send_response(206 if asked else 200)
            self._common_headers(file, len(body))
            if asked:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    folder, bucket, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ThreadingHTTPServer(("127.0.0.1", port), _handler(folder, bucket)).serve_forever()


if __name__ == "__main__":
    main()
