"""Checkpoints named by URL: http(s):// and public gs:// objects, downloaded once into a cache.

    path = fetch("gs://vit_models/augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz")

`gs://BUCKET/OBJECT` is read over HTTPS from the public endpoint, no cloud SDK or credentials:
$VIT_JAX_GCS_ENDPOINT/BUCKET/OBJECT (default https://storage.googleapis.com). Files are kept in
$VIT_JAX_CACHE (default ~/.cache/vit_jax) as gs/BUCKET/OBJECT or SCHEME/HOST/PATH; a file
already there is used without asking the network, so one put there by hand works offline.

A download goes to FILE.partial (what the server said about the file, in FILE.partial.json) and
is renamed to FILE only once its length is the server's Content-Length and its MD5 and CRC32C
are those of the server's `x-goog-hash: crc32c=...,md5=...` header (Cloud Storage sends both,
or only crc32c for a composite object): a file in the cache is complete. A dropped connection
is resumed where it stopped with an HTTP Range request (If-Range: the file must not have
changed), in the same call or a later one; server errors are retried with a growing wait.
Processes fetching the same file wait for each other (a lock file). urllib, and google-crc32c
for the CRC32C.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import google_crc32c

CACHE_ENV = "VIT_JAX_CACHE"
GCS_ENDPOINT_ENV = "VIT_JAX_GCS_ENDPOINT"
DEFAULT_CACHE = "~/.cache/vit_jax"
DEFAULT_GCS_ENDPOINT = "https://storage.googleapis.com"
SCHEMES = ("http", "https", "gs")
PARTIAL = ".partial"  # suffix of a download in progress; its server facts in PARTIAL + ".json"
# Answers worth asking again: timeouts, rate limits and server-side failures.
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
# The digests that x-goog-hash may carry, as hashlib-like objects (update, digest).
HASHES = {"md5": hashlib.md5, "crc32c": google_crc32c.Checksum}
_CHUNK = 1 << 20
_MAX_WAIT = 30.0


class DownloadError(ValueError):
    """A file that cannot be downloaded (no network, HTTP error, corrupted transfer). A
    ValueError, so that every command reports it as one `error: ...` line (exit status 2)."""


def is_url(source: str | os.PathLike) -> bool:
    """Whether `source` is an http://, https:// or gs:// URL."""
    scheme, sep, _ = os.fspath(source).partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def cache_dir() -> str:
    """$VIT_JAX_CACHE, or ~/.cache/vit_jax."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def http_url(url: str) -> str:
    """The URL to download: gs://BUCKET/OBJECT -> $VIT_JAX_GCS_ENDPOINT/BUCKET/OBJECT; an
    http(s) URL as is."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "gs":
        return url
    endpoint = (os.environ.get(GCS_ENDPOINT_ENV) or DEFAULT_GCS_ENDPOINT).rstrip("/")
    return f"{endpoint}/{parts.netloc}{urllib.parse.quote(parts.path, safe='/+=,')}"


def check_url(url: str) -> None:
    """Raises DownloadError if `url` (or the http URL of a gs:// one) cannot be requested: no
    host, or a port that is not a number."""
    parts = urllib.parse.urlsplit(http_url(url))
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        valid = bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        gcs = urllib.parse.urlsplit(url).scheme.lower() == "gs"
        where = f" (through {GCS_ENDPOINT_ENV}={http_url(url)!r})" if gcs else ""
        raise DownloadError(f"{url}{where} is not a valid URL (host and port): correct it.")


def cache_path(url: str, cache: str | None = None) -> str:
    """Where the file of `url` is kept: CACHE/gs/BUCKET/OBJECT or CACHE/SCHEME/HOST/PATH (a
    query string adds a hash of itself to the name)."""
    parts = urllib.parse.urlsplit(url)
    names = [n for n in urllib.parse.unquote(parts.path).split("/") if n]
    if not parts.netloc or not names or any(n in (".", "..") for n in names):
        raise DownloadError(f"{url} does not name a file to download (SCHEME://HOST/PATH).")
    if parts.query:
        names[-1] += "-" + hashlib.sha256(parts.query.encode()).hexdigest()[:8]
    host = re.sub(r"[^\w.-]", "_", parts.netloc)
    return os.path.join(cache or cache_dir(), parts.scheme.lower(), host, *names)


def fetch(
    url: str,
    *,
    cache: str | None = None,
    progress: bool = True,
    retries: int = 5,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
) -> str:
    """The local path of the file at `url` (http, https or gs), downloaded into the cache if
    it is not there yet. Progress goes to stderr (`progress=False`: silent).

    retries: attempts in a row that may fail without receiving a byte (a dropped connection,
      a 5xx answer) before giving up; the wait between them starts at `retry_wait` seconds and
      doubles. A connection that cannot be opened at all fails at once (no network).
    Raises DownloadError with what to do: download the file by hand to the path it names.
    """
    path = cache_path(url, cache)
    if os.path.isfile(path):
        return path
    check_url(url)  # a malformed URL is a mistake to fix, not a network drop to wait out
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _locked(path):
            if not os.path.isfile(path):  # another process may have finished it meanwhile
                _download(url, path, progress, retries, retry_wait, timeout)
    except OSError as e:
        raise DownloadError(
            f"cannot write {path} ({e.strerror or e}): set {CACHE_ENV} to a directory you can "
            "write to."
        ) from e
    return path


@dataclasses.dataclass(frozen=True)
class _Remote:
    """What the server said about the file when its download started."""

    url: str
    size: int | None  # bytes (Content-Length), if told
    hashes: dict[str, str]  # {"md5"|"crc32c": base64} from x-goog-hash, those told
    etag: str | None

    @classmethod
    def read(cls, path: str, url: str) -> _Remote | None:
        """The facts saved next to a partial download of `url`, or None."""
        try:
            with open(path) as f:
                remote = cls(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None
        return remote if remote.url == url else None

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Holds an exclusive lock on PATH.lock, and removes the lock file when done (a download
    that failed leaves no lock behind). A waiter that wakes on a lock file already removed
    locks the new one instead: one holder at a time."""
    import fcntl

    lock = f"{path}.lock"
    while True:
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                current = os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                continue  # its holder removed it: lock the file that is there now
            try:
                yield
            finally:
                _remove(lock)
            return


def _download(
    url: str, path: str, progress: bool, retries: int, retry_wait: float, timeout: float
) -> None:
    """Downloads `url` to `path` through PATH.partial, resuming a partial download of the same
    file, then checks it and renames it."""
    partial, facts = path + PARTIAL, path + PARTIAL + ".json"
    remote = _Remote.read(facts, url) if os.path.exists(partial) else None
    if remote is None:
        _remove(partial, facts)
    source, failures, meter = http_url(url), 0, _Meter(_shown(url), path, progress)
    while True:
        have, before = _size_of(partial), meter.received
        try:
            with _open(source, have, remote, timeout) as response:
                remote, have = _start(response, url, remote, have, partial, facts)
                meter.start(have, remote.size)
                _receive(response, partial, meter)
            if remote.size is not None and _size_of(partial) < remote.size:
                # read(n) ends quietly when the connection closes early
                raise _Interrupted(f"connection closed at byte {_size_of(partial)}")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416:  # the range is past the end: the partial file is not this file
                _remove(partial, facts)
            elif e.code not in _RETRY_STATUS:
                raise DownloadError(
                    f"{source} answered HTTP {e.code} ({e.reason}): check the URL (if a published "
                    "name's file has moved, download it by hand and pass its path)."
                ) from e
            error = f"HTTP {e.code}"
        except urllib.error.URLError as e:
            if _unreachable(e.reason) and not meter.received:
                raise _by_hand(url, path, f"{e.reason} (no network?)") from e
            error = str(e.reason)
        except (_Interrupted, http.client.HTTPException) as e:
            error = str(e)
        failures = 0 if meter.received > before else failures + 1
        if failures > retries:
            attempts = f"{failures} failed attempt{'s' * (failures > 1)} in a row"
            raise _by_hand(url, path, f"{attempts}, the last: {error}")
        meter.note(f"interrupted ({error}); resuming")
        time.sleep(min(retry_wait * 2 ** (failures - 1), _MAX_WAIT) if failures else 0)
    meter.done()
    _check(partial, facts, remote, source)
    os.replace(partial, path)
    _remove(facts)


class _Interrupted(Exception):
    """The connection broke while the body was read, or the answer cannot continue the file."""


def _receive(response, partial: str, meter: _Meter) -> None:
    """Appends the body of `response` to the partial file. Network errors raise _Interrupted;
    errors of the file (disk full) propagate as OSError."""
    with open(partial, "ab") as f:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (http.client.HTTPException, OSError) as e:  # dropped midway, or a timeout
                raise _Interrupted(f"{type(e).__name__}: {e}") from e
            if not chunk:
                return
            f.write(chunk)
            meter.add(len(chunk))


def _unreachable(reason) -> bool:
    """Whether a connection error means the host cannot be reached at all (no network, no such
    host, nothing listening, a certificate that does not verify): then waiting will not help."""
    return isinstance(
        reason, (ConnectionRefusedError, socket.gaierror, ssl.SSLCertVerificationError)
    ) or getattr(reason, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH)


def _shown(url: str) -> str:
    """`url`, and for gs:// the HTTPS URL it is read from."""
    return url if http_url(url) == url else f"{url} ({http_url(url)})"


def _size_of(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def _open(url: str, have: int, remote: _Remote | None, timeout: float):
    """GET `url`, from byte `have` on if a partial download of the same file exists."""
    headers = {"User-Agent": "vit_jax"}
    if have and remote is not None:
        headers["Range"] = f"bytes={have}-"
        if remote.etag:
            headers["If-Range"] = remote.etag
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _start(
    response, url: str, remote: _Remote | None, have: int, partial: str, facts: str
) -> tuple[_Remote, int]:
    """Continues the partial file on a 206 answer for its end; otherwise starts it afresh with
    the facts of this answer. Returns (the facts, bytes already in the partial file)."""
    span = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
    resumed = (
        response.status == 206
        and remote is not None
        and span is not None
        and int(span[1]) == have
        and remote.size in (None, int(span[2]))
    )
    if resumed:
        return remote, have
    if response.status != 200:  # a range answer that does not continue this file: start afresh
        _remove(partial, facts)
        raise _Interrupted(f"HTTP {response.status} does not continue the partial file")
    length = response.headers.get("Content-Length")
    remote = _Remote(
        url=url,
        size=int(length) if length and length.isdigit() else None,
        hashes=_hashes(response.headers.get_all("x-goog-hash") or []),
        etag=response.headers.get("ETag"),
    )
    open(partial, "wb").close()
    remote.write(facts)
    return remote, 0


def _hashes(values: list[str]) -> dict[str, str]:
    """{name: base64 digest} of the MD5 and CRC32C in `x-goog-hash: crc32c=..., md5=...`
    headers (one or several)."""
    told = {}
    for value in values:
        for item in value.split(","):
            name, _, digest = item.strip().partition("=")
            if name in HASHES:
                told[name] = digest
    return told


def _check(partial: str, facts: str, remote: _Remote, source: str) -> None:
    """Raises DownloadError (and deletes the partial file) unless its length, MD5 and CRC32C
    are the server's."""
    size = os.path.getsize(partial)
    why = None
    if remote.size is not None and size != remote.size:
        why = f"{size} bytes received, the server announced {remote.size}"
    elif remote.hashes:
        digests = {name: make() for name, make in HASHES.items() if name in remote.hashes}
        with open(partial, "rb") as f:
            while chunk := f.read(_CHUNK):
                for digest in digests.values():
                    digest.update(chunk)
        for name, digest in digests.items():
            got = base64.b64encode(digest.digest()).decode()
            if got != remote.hashes[name]:
                why = f"its {name.upper()} is {got}, the server's x-goog-hash says "
                why += remote.hashes[name]
                break
    if why:
        _remove(partial, facts)
        raise DownloadError(
            f"the download of {source} is corrupted ({why}); it was deleted. Run again to "
            "download it afresh."
        )


def _by_hand(url: str, path: str, why: str) -> DownloadError:
    return DownloadError(
        f"cannot download {_shown(url)}: {why}. Run again (a partial download resumes), or "
        f"download it by hand and put it at {path} (the cache, ${CACHE_ENV}), e.g.\n"
        f"  curl -L -o {path} {http_url(url)}"
    )


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class _Meter:
    """Progress of one download as plain text on stderr: bytes so far / total, percent, rate.
    On a terminal one line redrawn about 5 times a second; otherwise a line every 10%.
    `received` counts the bytes received in this call, shown or not."""

    def __init__(self, source: str, path: str, enabled: bool):
        self.enabled, self.received, self.started = enabled, 0, time.monotonic()
        self.have, self.total = None, None  # bytes of the file so far / in all (None: unknown)
        self.tenths, self.drawn = -1, 0.0
        if enabled:
            print(f"downloading {source}\n  to {path}", file=sys.stderr, flush=True)

    def start(self, have: int, total: int | None) -> None:
        """An answer begins: the file holds `have` of `total` bytes."""
        self.have, self.total = have, total

    def add(self, n: int) -> None:
        self.received += n
        self.have += n
        self._draw(final=False)

    def note(self, message: str) -> None:
        if self.enabled:
            print(f"\n  {message}" if sys.stderr.isatty() else f"  {message}", file=sys.stderr)

    def done(self) -> None:
        self._draw(final=True)

    def _draw(self, final: bool) -> None:
        if not self.enabled or self.have is None:
            return
        now = time.monotonic()
        if sys.stderr.isatty():
            if final or now - self.drawn >= 0.2:
                end = "\n" if final else ""
                print(f"\r{self._line(now)}", end=end, file=sys.stderr, flush=True)
                self.drawn = now
            return
        tenths = 10 * self.have // self.total if self.total else -1
        if tenths > self.tenths or final and self.tenths != 10:
            print(self._line(now), file=sys.stderr, flush=True)
            self.tenths = tenths

    def _line(self, now: float) -> str:
        rate = self.received / max(now - self.started, 1e-6)
        if not self.total:
            return f"  {_size(self.have)}  {_size(rate)}/s"
        percent = 100 * self.have / self.total
        return f"  {_size(self.have)} / {_size(self.total)}  {percent:5.1f}%  {_size(rate)}/s"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
