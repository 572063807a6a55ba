"""`contend exporter`: the per-cgroup accounting as a Prometheus endpoint."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click

from contend.analysis.accounting import Accounting
from contend.collect import bpftrace as bt
from contend.collect.accounting import MachineReader
from contend.collect.cgroups import detect_layout
from contend.collect.containers import ContainerNames
from contend.collect.sched_accounting import SchedAccounting
from contend.errors import ContendError, Terminated, UsageError
from contend.model import AccountingSnapshot
from contend.monitors.accounting import Engine
from contend.render.prometheus import ExporterStats, exposition
from contend.target import parse_duration, parse_listen, parse_positive_int

BACKENDS = ("auto", "bpftrace", "procfs")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine[AccountingSnapshot],
        sched: SchedAccounting | None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.engine = engine
        self.sched = sched
        self.lock = threading.Lock()
        self.scrapes = 0
        self.last_scrape_s = 0.0
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape per interval is no news

    def _send(
        self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        srv = self.server
        snap = srv.engine.latest()
        if path == "/healthz":
            if snap is None:
                self._send(503, b"no reading of the machine yet\n")
            else:
                age = (time.monotonic_ns() - snap.t_ns) / 1e9
                stale = age > 3 * srv.engine.interval_s + 5
                self._send(
                    503 if stale else 200,
                    f"{'stale' if stale else 'ok'}: last reading {age:.1f} s ago\n".encode(),
                )
            return
        if path != "/metrics":
            self._send(404, b"not found: /metrics or /healthz\n")
            return
        if snap is None:
            self._send(503, b"no reading of the machine yet\n")
            return
        start = time.perf_counter()
        openmetrics = "application/openmetrics-text" in self.headers.get("Accept", "")
        with srv.lock:
            stats = ExporterStats(srv.scrapes, srv.last_scrape_s, srv.engine.errors)
        body, content_type = exposition(snap, stats, openmetrics)
        self._send(200, body, content_type)
        with srv.lock:
            srv.scrapes += 1
            srv.last_scrape_s = time.perf_counter() - start

    do_HEAD = do_GET


@click.command("exporter")
@click.option("--listen", default="127.0.0.1:9949", show_default=True,
              help="HOST:PORT to serve /metrics and /healthz on (loopback unless told).")  # fmt: skip
@click.option("--interval", default="1", show_default=True, help="Seconds between readings.")
@click.option("--max-cgroups", default="500", show_default=True,
              help="Groups named in labels; the rest are summed as cgroup=\"other\".")  # fmt: skip
@click.option("--backend", default="auto", show_default=True,
              help="auto (bpftrace as root, else procfs), bpftrace or procfs.")  # fmt: skip
def command(listen: str, interval: str, max_cgroups: str, backend: str) -> int:
    """Serve every cgroup's CPU accounting to Prometheus: use, quota, throttling, PSI,
    run-queue wait and the starved verdict, read every --interval seconds."""
    host, port = parse_listen("--listen", listen)
    seconds = parse_duration("--interval", interval, 0.1, 3600)
    limit = parse_positive_int("--max-cgroups", max_cgroups, 1, 100_000)
    if backend not in BACKENDS:
        raise UsageError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    chosen, why = backend, ""
    if backend != "procfs":
        ok, why = bt.available()
        if not ok and backend == "bpftrace":
            raise ContendError(f"--backend bpftrace: {why}")
        chosen = "bpftrace" if ok else "procfs"
    sched = SchedAccounting(seconds) if chosen == "bpftrace" else None
    reader = MachineReader(detect_layout(), sched=sched, containers=ContainerNames())
    accounting = Accounting(max_cgroups=limit, cpus=os.cpu_count() or 1)
    engine: Engine[AccountingSnapshot] = Engine(reader.read, accounting.update, seconds)
    try:
        server = _Server((host, port), engine, sched)
    except OSError as e:
        raise ContendError(f"--listen {listen}: {e.strerror or e}") from None
    serving: threading.Thread | None = None
    try:
        if sched is not None:
            sched.start()
        engine.step()  # the baseline: /metrics answers from the start
        engine.start()
        serving = threading.Thread(target=server.serve_forever, name="contend-http", daemon=True)
        serving.start()
        shown = f"[{host}]" if ":" in host else host
        fallback = (
            f" (auto -> procfs: {why}; who waited behind whom needs it)"
            if why and chosen == "procfs" and backend == "auto"
            else ""
        )
        click.echo(
            f"contend exporter: http://{shown}:{server.server_address[1]}/metrics "
            f"({chosen}{fallback}, every {seconds:g} s, at most {limit} cgroups named)",
            err=True,
        )
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, Terminated):
        click.echo("contend exporter: stopped", err=True)
    finally:
        # A second SIGTERM (timeout(1) signals the child and then its process group) or
        # Ctrl-C must not cut the clean stop short: bpftrace must end too.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if serving is not None:
            server.shutdown()
        server.server_close()
        engine.stop()
        reader.close()
        if sched is not None:
            sched.stop()
    return 0
