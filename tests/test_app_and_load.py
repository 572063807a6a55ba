"""The lab's app (Flask, under gunicorn for real) and the open-loop load generator."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from contend.collect.procfs import ProcFS
from contend.lab import load
from contend.lab.app import DEFAULT_N, MAX_N, compute, create_app


@pytest.mark.parametrize(
    ("query", "status"),
    [("", 200), ("?n=1000", 200), (f"?n={MAX_N}", 200), ("?n=-5", 400), ("?n=0", 400),
     (f"?n={10**9}", 400), ("?n=abc", 400), ("?n=1.5", 400), (f"?n={MAX_N + 1}", 400)],
)  # fmt: skip
def test_compute_validates_n(query: str, status: int) -> None:
    client = create_app().test_client()
    response = client.get(f"/compute{query}")
    assert response.status_code == status
    body = response.get_json()
    if status == 200:
        n = int(query[3:]) if query else DEFAULT_N
        assert body["n"] == n and body["result"] == compute(n)
    else:
        assert "error" in body


def test_health() -> None:
    assert create_app().test_client().get("/health").get_json() == {"status": "ok"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def gunicorn_app() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "contend.lab.app", "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        assert load.wait_healthy(f"{base}/health", 30, lambda: proc.poll() is None)
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(10)


def test_gunicorn_one_worker_four_threads_named_contend_app(
    gunicorn_app: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, base = gunicorn_app
    fs = ProcFS()
    family = fs.descendants(proc.pid)
    assert len(family) == 2  # master + 1 worker
    worker = next(p for p in family if p != proc.pid)
    # The gthread pool starts threads on demand: 6 slow requests at once start all 4.
    results = load.run_load(
        f"{base}/compute?n=2000000", rate_per_s=200, duration_s=0.03, concurrency=6
    )
    assert [r.status for r in results] == [200] * 6
    names = {t.comm for t in fs.tasks(family)}
    assert names == {"contend-app"}
    worker_threads = fs.tids(worker)
    assert len(worker_threads) == 5  # main thread + 4 request threads
    bad = load.sequential(f"{base}/compute?n=abc", 1)
    assert bad[0].status == 400


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    delay_s = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _serve(delay_s: float, threads: bool) -> tuple[http.server.HTTPServer, str]:
    handler = type("H", (_SlowHandler,), {"delay_s": delay_s})
    cls = http.server.ThreadingHTTPServer if threads else http.server.HTTPServer
    server = cls(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def test_open_loop_sends_rate_times_duration_on_schedule() -> None:
    server, url = _serve(0.0, threads=True)
    try:
        started = time.monotonic()
        results = load.run_load(url, rate_per_s=50, duration_s=1.0, concurrency=8)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    assert len(results) == 50
    assert all(r.status == 200 for r in results)
    gaps = {results[i + 1].intended_ns - results[i].intended_ns for i in range(49)}
    assert gaps <= {20_000_000, 20_000_001, 19_999_999}
    assert 0.95 <= elapsed < 2.0


def test_open_loop_charges_queueing_to_latency() -> None:
    """A server that takes 100 ms per request, one at a time, offered 20 req/s: a closed
    loop would report 100 ms; open loop sees the queue grow to about a second."""
    server, url = _serve(0.1, threads=False)
    try:
        results = load.run_load(url, rate_per_s=20, duration_s=1.0, concurrency=1, drain_s=5)
    finally:
        server.shutdown()
    latencies = sorted(r.latency_ns / 1e6 for r in results if r.status == 200)
    assert len(latencies) == 20
    assert latencies[0] < 200
    assert latencies[-1] > 900  # the 20th request waited behind 19 others


def test_refused_connections_are_counted_not_raised() -> None:
    port = _free_port()  # nothing listens there
    results = load.run_load(f"http://127.0.0.1:{port}/", rate_per_s=20, duration_s=0.5)
    assert len(results) == 10
    assert all(r.status == 0 and r.error == "ConnectError" for r in results)


_ENDED_BY_SIGNAL = """
import http.server, os, signal, sys, threading
from contend.cli import _on_sigterm
from contend.errors import Terminated
from contend.lab import load

class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
threading.Thread(target=server.serve_forever, daemon=True).start()
signal.signal(signal.SIGTERM, _on_sigterm)
done = []

def on_result(sample):
    # Called inside a request's task: the signal arrives while that task runs, the case
    # that lost it (a handler's exception lands in the frame that is running).
    done.append(sample)
    if len(done) == 5:
        os.kill(os.getpid(), signal.SIGTERM)

try:
    load.run_load(f"http://127.0.0.1:{server.server_address[1]}/", 50, 120, on_result=on_result)
except Terminated as e:
    print("terminated", e.signum, flush=True)
    sys.exit(143)
print("ran to its end")
"""


def test_sigterm_ends_the_load_at_once() -> None:
    """The CLI's SIGTERM handler raises Terminated; inside the event loop it must end the
    load, not die unretrieved in one request's task while the load runs on (CI saw a lab
    run on for its full 60 s after SIGTERM). The child signals itself from inside a task."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENDED_BY_SIGNAL], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=60)  # 120 s of load: 60 s tells the two apart
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out) == (143, "terminated 15\n"), err
    assert "never retrieved" not in err, err
