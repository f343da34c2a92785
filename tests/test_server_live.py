"""``unite-search serve`` live: uvicorn on loopback batching concurrent queries and decoding uploads on a
bounded pool, and the command itself."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from test_server import ODD_IMAGE_ID, build_served_index

from unite_search import Index
from unite_search.cli import main
from unite_search.server import create_app


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder):
    return build_served_index(tmp_path_factory.mktemp("serve"), encoder)


@contextmanager
def live(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _all_at_once(n: int, ask) -> list:
    """``ask(i)`` for i < n from n threads released together: each one's answer, or the exception it raised."""
    start, results = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = ask(i)
        except Exception as exc:  # noqa: BLE001  the caller's assertions report it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_live_server_batches_concurrent_queries(built, encoder):
    app = create_app(Index.open(built[1], encoder=encoder), batch_window_ms=80)
    n = 16
    with live(app) as base:
        results = _all_at_once(n, lambda i: _post(f"{base}/search", {"text": f"query number {i}", "k": 3}))
        assert all(isinstance(r, dict) and len(r["hits"]) == 3 for r in results), results
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        batches = int(re.search(r"^unite_search_encoder_batches_total (\d+)$", metrics, re.M).group(1))
        encoded = int(re.search(r"^unite_search_encoder_batch_size_sum (\d+)$", metrics, re.M).group(1))
        assert encoded == n and batches < n, metrics
        assert re.search(rf'^unite_search_requests_total\{{endpoint="/search",status="200"\}} {n}$', metrics, re.M)
        odd = urllib.request.urlopen(f"{base}/items/{quote(ODD_IMAGE_ID, safe='')}", timeout=10)
        assert json.loads(odd.read())["id"] == ODD_IMAGE_ID
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(f"{base}/search", {"text": "x", "where": "1=1; DROP TABLE x"})
        assert err.value.code == 400 and json.loads(err.value.read())["error"] == "bad_query"


def test_uploads_are_decoded_by_a_bounded_pool(built, encoder):
    """However many uploads arrive together, at most ``decode_workers`` are decoded at once."""
    root, index = built
    app = create_app(Index.open(index, encoder=encoder), decode_workers=2, batch_window_ms=20)
    server = app.state.server
    real, lock, running, seen = server._plan_and_prepare, threading.Lock(), [0], {"max": 0, "threads": set()}

    def watched(index, query):
        with lock:
            running[0] += 1
            seen["max"] = max(seen["max"], running[0])
            seen["threads"].add(threading.current_thread().name)
        try:
            time.sleep(0.05)  # long enough for the other uploads to arrive meanwhile
            return real(index, query)
        finally:
            with lock:
                running[0] -= 1

    server._plan_and_prepare = watched
    data = (root / "photos/small.jpg").read_bytes()
    n = 8
    with live(app) as base:

        def ask(i: int) -> dict:
            boundary = f"b{i}x"
            part = 'Content-Disposition: form-data; name="image"; filename="q.jpg"\r\nContent-Type: image/jpeg'
            body = f"--{boundary}\r\n{part}\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
            ctype = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            with urllib.request.urlopen(urllib.request.Request(f"{base}/search", body, ctype), timeout=60) as r:
                return json.loads(r.read())

        results = _all_at_once(n, ask)
    assert all(isinstance(r, dict) and r["hits"][0]["path"] == "photos/small.jpg" for r in results), results
    assert seen["max"] == 2, seen
    assert all(name.startswith("unite-search-decode") for name in seen["threads"]), seen


def _raw(base: str, request: bytes, hang_up: bool = False) -> bytes:
    """Send ``request`` as bytes on a socket (no client library rewrites its headers); the answer, or nothing when
    ``hang_up`` closes the connection before the request is whole."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        if hang_up:
            return b""
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_non_ascii_token_passes_in_the_header_as_clients_send_it(built, encoder):
    """Clients send a header's non-ASCII characters as UTF-8 bytes: the guard compared their latin-1 reading, so
    such a token never passed in the header (and did in ?token=)."""
    app = create_app(Index.open(built[1], encoder=encoder), token="pässwort")
    with live(app) as base:

        def info(token: bytes) -> bytes:
            request = b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer "
            return _raw(base, request + token + b"\r\n\r\n").split(b"\r\n")[0]

        assert info("pässwort".encode()) == b"HTTP/1.1 200 OK"
        assert info("pässwort".encode("latin-1")) == info(b"p\xc3\xa4sswor") == b"HTTP/1.1 401 Unauthorized"


def test_a_client_that_hangs_up_mid_request_is_not_a_server_error(built, encoder, caplog):
    app = create_app(Index.open(built[1], encoder=encoder))
    image = (built[0] / "photos/small.jpg").read_bytes()
    head = b'--xx\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n\r\n'
    form = b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
    form += b"Content-Length: %d\r\n\r\n" % (len(head) + len(image) + 100) + head + image[:500]
    with live(app) as base:
        _raw(base, b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b'Content-Length: 100\r\n\r\n{"text": ', hang_up=True)  # fmt: skip
        _raw(base, form, hang_up=True)
        deadline, counted = time.monotonic() + 20, ""
        while time.monotonic() < deadline and not re.search(r'status="499"\} 2$', counted, re.M):
            time.sleep(0.1)
            metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
            counted = "\n".join(re.findall(r'^unite_search_requests_total\{endpoint="/search".*$', metrics, re.M))
    assert re.search(r'status="499"\} 2$', counted, re.M) and 'status="500"' not in counted, counted
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_runs_uvicorn(built, tmp_path):
    _, index = built
    port = _free_port()
    env = {**os.environ, "UNITE_SEARCH_TOKEN": "t0ken"}
    cmd = [sys.executable, "-m", "unite_search.cli", "serve", str(index), "--port", str(port), "--device", "cpu",
           "--gpu-search"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        req = urllib.request.Request(
            f"{base}/search", b'{"text": "a red fox", "k": 2}',
            {"Content-Type": "application/json", "Authorization": "Bearer t0ken"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            assert len(json.loads(r.read())["hits"]) == 2
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/info", timeout=10)
        assert err.value.code == 401
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    assert "warning" not in stderr.lower()
    from unite_search import ann

    said = "searched on the GPU" if ann.gpu_count() else "FAISS sees no GPU"
    shards = json.loads((index / "manifest.json").read_text())["shards"]
    assert all(f"shard {name}: {said}" in stderr for name in shards), stderr  # where each shard is searched


def test_cli_serve_on_a_port_in_use_says_so_in_one_line_before_the_model_loads(built, monkeypatch):
    """Not a URL printed as if serving, then uvicorn's error and exit status 3 (ingest's "some inputs failed")."""
    from unite_search import Encoder

    loads = []
    monkeypatch.setattr(Encoder, "load", lambda *args, **kwargs: loads.append(args) or 1 / 0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = CliRunner().invoke(main, ["serve", str(built[1]), "--port", str(port), "--device", "cpu"])
    assert out.exit_code == 2 and loads == [], out.output
    said = rf"Error: cannot listen on 127\.0\.0\.1:{port}: .+ \(another server holds it\? pass another --port\)\n"
    assert re.fullmatch(said, out.output), out.output


def test_cli_serve_warns_without_a_token_off_loopback(tmp_path):
    runner = CliRunner()
    not_an_index = tmp_path / "empty"
    not_an_index.mkdir()
    r = runner.invoke(main, ["serve", str(not_an_index), "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "warning: serving 0.0.0.0 without a token" in r.stderr
    assert "holds no unite-search index" in r.output
    r = runner.invoke(main, ["serve", str(not_an_index), "--host", "0.0.0.0", "--token", "t"])
    assert r.exit_code == 1 and "warning" not in r.stderr
    r = runner.invoke(main, ["serve", str(not_an_index), "--host", "localhost"])
    assert "warning" not in r.stderr
