"""The lab's app: Flask with a CPU-bound `/compute`, served by gunicorn.

Run as `python -m contend.lab.app --port N`: gunicorn with 1 worker, gthread, 4 threads,
bound to 127.0.0.1, debug off, worker timeout on; every process is named `contend-app`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from contend.prctl import set_comm

COMM = "contend-app"
# About 25 ms of pure-Python work on this project's 2-vCPU machines (0.052 us/iteration
# under CPython 3.11).
DEFAULT_N = 480_000
MAX_N = 5_000_000


def compute(n: int) -> int:
    """Pure-Python CPU work: no I/O, no allocation beyond ints, holds the GIL throughout."""
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def create_app() -> Flask:
    app = Flask("contend-app")

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(status="ok")

    @app.get("/compute")
    def compute_endpoint() -> ResponseReturnValue:
        raw = request.args.get("n", str(DEFAULT_N))
        try:
            n = int(raw)
        except ValueError:
            return jsonify(error=f"n must be an integer, got {raw[:40]!r}"), 400
        if not 1 <= n <= MAX_N:
            return jsonify(error=f"n must be between 1 and {MAX_N}"), 400
        started = time.thread_time_ns()
        result = compute(n)
        cpu_ms = (time.thread_time_ns() - started) / 1e6
        return jsonify(n=n, result=result, cpu_ms=round(cpu_ms, 3))

    return app


def serve(host: str, port: int, threads: int = 4, timeout: int = 30) -> None:
    from gunicorn.app.base import BaseApplication

    def on_starting(server: Any) -> None:
        set_comm(COMM)

    def post_fork(server: Any, worker: Any) -> None:
        set_comm(COMM)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings = {
                "bind": f"{host}:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": threads,
                "timeout": timeout,
                "graceful_timeout": 5,
                "proc_name": COMM,
                "loglevel": "warning",
                "accesslog": None,
                "on_starting": on_starting,
                "post_fork": post_fork,
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return create_app()

    Server().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="contend-app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    set_comm(COMM)
    serve(args.host, args.port, args.threads)


if __name__ == "__main__":
    main()
