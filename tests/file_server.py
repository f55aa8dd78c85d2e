"""A local HTTP server for download tests: files served on 127.0.0.1 the way a public Cloud
Storage bucket serves them (Range requests, ETag, x-goog-hash), with scripted failures."""

import base64
import contextlib
import hashlib
import http.server
import re
import threading
import time
from collections.abc import Iterator

import google_crc32c


class FileServer(http.server.ThreadingHTTPServer):
    """Serves `files` {URL path: bytes} like a public bucket: Content-Length, ETag and
    x-goog-hash (crc32c and md5) of the whole file, Range requests answered with 206.
    `script` {path: [answer, ...]}: how the next requests for path go wrong, in order: an int n
    stops the body after n bytes and closes the connection, a str is an HTTP error status.
    `corrupt`: paths whose bytes differ from their announced hashes. `composite`: paths whose
    x-goog-hash has no md5 (as for a composite object). `delay`: seconds before each answer.
    `requests`: the (path, Range header) of each request."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.script, self.corrupt, self.requests = {}, {}, set(), []
        self.composite = set()
        self.delay = 0.0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        time.sleep(server.delay)
        body = server.files.get(self.path)
        answer = (server.script.get(self.path) or [len(body or b"")]).pop(0)
        if body is None or isinstance(answer, str):
            self.send_error(404 if body is None else int(answer))
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-")[1])
        if start >= len(body) > 0:
            self.send_error(416)
            return
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        crc = base64.b64encode(google_crc32c.Checksum(body).digest()).decode()
        told = f"crc32c={crc}" + ("" if self.path in server.composite else f",md5={md5}")
        if self.path in server.corrupt:
            body = body[:-1] + bytes([body[-1] ^ 1])
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("x-goog-hash", told)
        self.send_header("ETag", '"1"')
        self.end_headers()
        self.wfile.write(body[start : start + answer])

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving() -> Iterator[FileServer]:
    """A FileServer answering in a background thread until the block ends."""
    with FileServer() as server:
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        try:
            yield server
        finally:
            server.shutdown()
