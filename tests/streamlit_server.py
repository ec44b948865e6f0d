"""One way to run a Streamlit script on a free localhost port, and to drive it with Debian's chromium, for browser
tests and benchmarks."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def chromium_browser() -> Iterator:
    """Headless Debian chromium through Playwright (closed on exit)."""
    from playwright import sync_api  # only the browser tests and benchmarks need it

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """The first of `n` consecutive ports free on 127.0.0.1 now (for `serve --workers n`)."""
    for _ in range(100):
        first = free_port()
        if first + n - 1 > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {n} consecutive free ports")


@contextlib.contextmanager
def _serving(command: list[str], what: str, env: dict | None, log_path: Path | None, timeout: float,
             port: int) -> Iterator[str]:
    """Run `command` (a server on `port`); yield its URL once /_stcore/health answers ok; always stop it."""
    with _serving_process(command, what, env, log_path, timeout, port) as (url, _):
        yield url


@contextlib.contextmanager
def _serving_process(command: list[str], what: str, env: dict | None, log_path: Path | None, timeout: float,
                     port: int) -> Iterator[tuple[str, subprocess.Popen]]:
    log = log_path.open("w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text()[-2000:] if log_path else ""
                raise RuntimeError(f"{what} did not start: {tail}")
            time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        if log_path:
            log.close()


def _streamlit_command(script: Path, port: int, address: str) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address",
            address, "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType",
            "none"]


@contextlib.contextmanager
def streamlit_server(script: Path, env: dict | None = None, log_path: Path | None = None,
                     timeout: float = 90, address: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """`streamlit run script` headless (on 127.0.0.1 unless told); yields its URL once healthy; always stops it."""
    port = port or free_port()
    with _serving(_streamlit_command(script, port, address), "streamlit", env, log_path, timeout, port) as url:
        yield url


@contextlib.contextmanager
def streamlit_server_process(script: Path, env: dict | None = None, log_path: Path | None = None,
                             timeout: float = 90) -> Iterator[tuple[str, subprocess.Popen]]:
    """As streamlit_server, also yielding the server process (benchmarks read its CPU time)."""
    port = free_port()
    with _serving_process(_streamlit_command(script, port, "127.0.0.1"), "streamlit", env, log_path, timeout,
                          port) as served:
        yield served


def _serve_command(db_path: Path, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "study", "serve", "--db", str(db_path), "--port", str(port), "--workers", str(workers)]


@contextlib.contextmanager
def participant_server(db_path: Path, log_path: Path, timeout: float = 90) -> Iterator[str]:
    """`python -m study serve` (one worker) on a free localhost port; yields its URL once healthy; always stops it."""
    port = free_port()
    with _serving(_serve_command(db_path, port, 1), "participant server", None, log_path, timeout, port) as url:
        yield url


@contextlib.contextmanager
def participant_server_process(db_path: Path, log_path: Path, env: dict | None = None,
                               timeout: float = 90) -> Iterator[tuple[str, subprocess.Popen]]:
    """As participant_server, also yielding the server process (its pid is the server's: one worker, serve execs)."""
    port = free_port()
    with _serving_process(_serve_command(db_path, port, 1), "participant server", env, log_path, timeout,
                          port) as served:
        yield served


@contextlib.contextmanager
def participant_workers(db_path: Path, log_path: Path, workers: int, env: dict | None = None,
                        timeout: float = 180) -> Iterator[tuple[list[str], subprocess.Popen]]:
    """`python -m study serve --workers N` on N consecutive free ports; yields the workers' URLs (once every one is
    healthy) and the supervisor process; always stops it."""
    first = free_ports(workers)
    urls = [f"http://127.0.0.1:{port}" for port in range(first, first + workers)]
    with _serving_process(_serve_command(db_path, first, workers), "participant server", env, log_path, timeout,
                          first) as (_, proc):
        deadline = time.monotonic() + timeout
        for url in urls[1:]:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.read() == b"ok":
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"participant server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.3)
        yield urls, proc
