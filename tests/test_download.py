"""Downloads by URL against a local HTTP server (127.0.0.1, Range and x-goog-hash like Cloud
Storage): a complete file, a dropped connection resumed, a corrupted file refused, no network,
gs:// through the configurable endpoint, and the published names."""

import concurrent.futures
import os
import random
import socket
import time

import pytest

from tests.file_server import serving
from vit_jax.checkpoint import download, published
from vit_jax.checkpoint.download import DownloadError, fetch


@pytest.fixture
def server():
    with serving() as s:
        yield s


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def content(n=300_000, seed=0) -> bytes:
    return random.Random(seed).randbytes(n)


def cache_files(cache) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), cache) for d, _, fs in os.walk(cache) for f in fs
    )


def test_a_file_is_downloaded_once_with_progress_then_read_from_the_cache(server, cache, capfd):
    server.files["/w/model.npz"] = data = content()
    path = fetch(server.url("/w/model.npz"))
    port = server.server_address[1]
    assert path == str(cache / "http" / f"127.0.0.1_{port}" / "w" / "model.npz")
    assert open(path, "rb").read() == data
    err = capfd.readouterr().err
    assert f"downloading {server.url('/w/model.npz')}" in err
    assert "293.0 KiB / 293.0 KiB  100.0%" in err and "/s" in err
    assert fetch(server.url("/w/model.npz")) == path
    assert len(server.requests) == 1  # the second fetch asked nothing
    assert cache_files(cache) == [os.path.relpath(path, cache)]  # no partial, no lock left


def test_a_dropped_connection_is_resumed_where_it_stopped(server, cache):
    server.files["/w/big.npz"] = data = content()
    server.script["/w/big.npz"] = [100_000, "503", "503", 50_000]
    path = fetch(server.url("/w/big.npz"), progress=False, retries=2, retry_wait=0)
    assert open(path, "rb").read() == data
    assert [r for _, r in server.requests] == [
        None,
        "bytes=100000-",  # 503
        "bytes=100000-",  # 503: two failures in a row without a byte, as many as allowed
        "bytes=100000-",  # 50,000 bytes, then dropped
        "bytes=150000-",
    ]


def test_a_failed_download_never_looks_complete_and_a_later_call_resumes_it(server, cache):
    server.files["/w/big.npz"] = data = content()
    server.script["/w/big.npz"] = [120_000, "503"]
    url = server.url("/w/big.npz")
    with pytest.raises(DownloadError, match="1 failed attempt in a row, the last: HTTP 503"):
        fetch(url, progress=False, retries=0)
    final = download.cache_path(url)
    assert not os.path.exists(final)
    assert os.path.getsize(final + download.PARTIAL) == 120_000
    assert open(fetch(url, progress=False), "rb").read() == data
    assert server.requests[-1] == ("/w/big.npz", "bytes=120000-")
    assert cache_files(cache) == [os.path.relpath(final, cache)]


def test_processes_fetching_the_same_file_download_it_once(server, cache):
    server.files["/w/m.npz"] = data = content()
    server.delay = 0.3  # both fetches start while the first is being answered
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # each takes the file lock anew
        paths = list(pool.map(lambda _: fetch(server.url("/w/m.npz"), progress=False), [0, 1]))
    assert paths[0] == paths[1] and open(paths[0], "rb").read() == data
    assert len(server.requests) == 1


def test_a_corrupted_download_is_refused_and_deleted(server, cache):
    server.files["/w/bad.npz"] = content()
    server.corrupt.add("/w/bad.npz")
    url = server.url("/w/bad.npz")
    with pytest.raises(DownloadError, match=r"corrupted \(its MD5 is .*x-goog-hash says"):
        fetch(url, progress=False)
    assert cache_files(cache) == []  # neither the file nor its lock


def test_a_composite_object_is_checked_by_its_crc32c(server, cache):
    server.files["/w/c.npz"] = data = content()
    server.composite.add("/w/c.npz")
    assert open(fetch(server.url("/w/c.npz"), progress=False), "rb").read() == data
    server.files["/w/bad.npz"] = content()
    server.composite.add("/w/bad.npz")
    server.corrupt.add("/w/bad.npz")
    with pytest.raises(DownloadError, match=r"corrupted \(its CRC32C is .*x-goog-hash says"):
        fetch(server.url("/w/bad.npz"), progress=False)
    assert cache_files(cache) == [
        os.path.relpath(download.cache_path(server.url("/w/c.npz")), cache)
    ]


def test_the_file_lock_has_one_holder_though_each_holder_removes_it(tmp_path):
    path, inside, most = str(tmp_path / "f.npz"), [0], [0]

    def hold(i):
        with download._locked(path):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            inside[0] -= 1
            if i % 2:
                raise OSError("a failed download")  # removes the lock on the way out too

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = [f.exception() for f in [pool.submit(hold, i) for i in range(12)]]
    assert most[0] == 1 and sum(e is not None for e in outcomes) == 6
    assert os.listdir(tmp_path) == []


def test_no_network_names_the_url_and_where_to_put_the_file(cache):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/vit/ViT-B_16.npz"
    with pytest.raises(DownloadError) as error:
        fetch(url, progress=False)
    message = str(error.value)
    path = download.cache_path(url)
    assert "Connection refused" in message and "no network?" in message
    assert f"put it at {path}" in message and f"curl -L -o {path} {url}" in message
    assert cache_files(cache) == []  # no lock left behind


def test_gs_urls_are_read_from_the_configured_endpoint(server, cache, monkeypatch):
    server.files["/bucket/dir+x/f.npz"] = data = content(1000)
    monkeypatch.setenv(download.GCS_ENDPOINT_ENV, server.url(""))
    path = fetch("gs://bucket/dir+x/f.npz", progress=False)
    assert path == str(cache / "gs" / "bucket" / "dir+x" / "f.npz")
    assert open(path, "rb").read() == data
    monkeypatch.delenv(download.GCS_ENDPOINT_ENV)
    assert download.http_url("gs://vit_models/imagenet21k/ViT-B_16.npz") == (
        "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz"
    )


def test_a_missing_file_is_one_clear_error(server, cache):
    with pytest.raises(DownloadError, match="answered HTTP 404"):
        fetch(server.url("/nothing.npz"), progress=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:80x/a.npz", "http://h:99999/a.npz"])
def test_a_malformed_url_fails_at_once_without_retries(cache, url):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="is not a valid URL"):
        fetch(url, progress=False, retry_wait=5.0)  # a retry would take seconds
    assert time.monotonic() - started < 2 and not list(cache.rglob("*"))


# --- published names ------------------------------------------------------------------------


def test_published_names_resolve_to_the_official_files():
    assert published.resolve("augreg:B/16-i21k") == (
        "gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"
    )
    assert published.resolve("augreg:L/16-i21k+i1k") == (
        "gs://vit_models/augreg/L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0"
        "--imagenet2012-steps_20k-lr_0.01-res_384.npz"
    )
    assert published.resolve("vit:L/16-i21k+i1k-224") == (
        "gs://vit_models/imagenet21k+imagenet2012/ViT-L_16-224.npz"
    )
    assert published.resolve("vit:H/14-i21k") == "gs://vit_models/imagenet21k/ViT-H_14.npz"
    assert published.resolve("runs/x.npz") == "runs/x.npz"  # not a name: unchanged
    with pytest.raises(ValueError, match="did you mean 'augreg:B/16-i21k'"):
        published.resolve("augreg:B/16-i22k")
