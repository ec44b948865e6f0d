"""`python -m study serve`: the participant server, a Streamlit server that only ever shows the labeling flow.

It runs `participant_app/app.py`, alone in its folder (a `pages/` folder beside a Streamlit script would
put every page in it on the server), with its settings given on the command line, which overrides any
config.toml: headless, no usage statistics, XSRF and CORS protection, tiny upload and message limits, no
toolbar, menu or sidebar, no error details for visitors, no file watching, and no garbage collection after
every rerun (a full `gc.collect(2)` was more than half the server's CPU time per answer).

With `--workers N` (default: one per core) it runs N such servers on ports --port .. --port + N - 1 under a
supervisor (study/workers.py), for a proxy with sticky sessions to spread visitors over; with one worker the
server replaces this process, as before.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from .db import StudyDBError, open_db
from .design import list_studies
from .errors import REFUSALS
from .guard import MessageIntake, client_address

PARTICIPANT_APP = Path(__file__).resolve().parents[1] / "participant_app" / "app.py"
LAUNCHER = PARTICIPANT_APP.parent / "run.py"  # `streamlit` without its config-file pollers
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8502
DEFAULT_BASE_URL = f"http://localhost:{DEFAULT_PORT}"  # for printed links; give the public https address

HARDENED_OPTIONS: dict[str, str] = {
    "server.headless": "true",
    "browser.gatherUsageStats": "false",
    "server.enableXsrfProtection": "true",
    "server.enableCORS": "true",
    "server.maxUploadSize": "1",  # MB; the participant page has no upload at all
    "server.maxMessageSize": "5",  # MB; a message holds three 32x32 PNGs
    "server.maxWidgetStateSize": "1",  # MB; the widget sends a few answers
    "server.enableStaticServing": "false",
    "server.enableAgentApi": "false",
    "server.fileWatcherType": "none",
    "server.runOnSave": "false",
    "server.allowRunOnSave": "false",
    "client.toolbarMode": "minimal",
    "client.showSidebarNavigation": "false",
    "client.showErrorDetails": "none",
    "client.showErrorLinks": "false",
    "client.disableDataExport": "true",
    "ui.hideTopBar": "true",
    "runner.magicEnabled": "false",
    "runner.postScriptGC": "false",
    "logger.hideWelcomeMessage": "true",
}


# Answered 404 to participants: live session counts, and the app manifest (nothing a participant needs)
HIDDEN_PATHS = ("/_stcore/metrics", "/manifest.json")
COMPONENT_PREFIX = "/component/"  # the trial widget's iframe: framed by the study page itself, so 'self'


class ParticipantHeaders:
    """ASGI middleware for the participant server (plain ASGI, no framework import): no other site may frame the
    study (`frame-ancestors 'none'`, `X-Frame-Options: DENY`; the widget's own iframe only by the page), and
    the paths above are not served."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in HIDDEN_PATHS:
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain"), *self._frame_headers(False)]})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        framed = path.startswith(COMPONENT_PREFIX)

        async def send_with_headers(message) -> None:
            if message.get("type") == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in
                        (b"x-frame-options", b"content-security-policy")]
                message = {**message, "headers": kept + self._frame_headers(framed)}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _frame_headers(framed: bool) -> list[tuple[bytes, bytes]]:
        return [(b"x-frame-options", b"SAMEORIGIN" if framed else b"DENY"),
                (b"content-security-policy", b"frame-ancestors 'self'" if framed else b"frame-ancestors 'none'")]


class ParticipantIntake:
    """ASGI middleware for the participant server's websockets (study.guard.MessageIntake): each address opens
    new ones at a limited rate (beyond it the handshake is refused), and each connection is read no faster than
    its own and its address's message budgets allow. A flood thus waits in the sender's own network buffers
    instead of taking the server's time from everyone else."""

    def __init__(self, app, intake: MessageIntake | None = None) -> None:
        self.app, self.intake = app, intake or MessageIntake()

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "websocket":
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        address = client_address(peer[0] if peer else None, headers)
        admitted, budget = self.intake.connect(address)
        if not admitted:
            await receive()  # the handshake's websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # before accept: answered 403
            return

        gone = False  # a send found the browser gone

        async def paced_receive():
            message = await receive()
            if message.get("type") == "websocket.receive":
                delay = self.intake.delay(budget, address)
                if delay > 0:
                    await asyncio.sleep(delay)
            return {"type": "websocket.disconnect", "code": 1006} if gone else message

        async def sending(message) -> None:
            # A browser that left while its messages waited: said at the next receive, where Streamlit expects
            # it (a failed send would make Starlette refuse that receive, and Streamlit log a traceback).
            nonlocal gone
            if gone:
                return
            try:
                await send(message)
            except OSError:
                gone = True

        await self.app(scope, paced_receive, sending)


def handshake_log_filter(record: logging.LogRecord) -> bool:
    """For the 'uvicorn.error' logger: uvicorn writes a line with the client's address for every websocket handshake
    (accepted, or refused with 403: one per page load and one per refused attempt, so a script could grow the log
    at will, and the participant server promises no access log). Those lines are dropped; refused handshakes are
    counted in study.errors.REFUSALS instead (once per minute, with a count). Everything else passes."""
    message = str(record.msg)
    if not message.startswith('%s - "WebSocket %s"'):
        return True
    if not message.endswith("[accepted]"):
        status = record.args[-1] if isinstance(record.args, tuple) and len(record.args) > 2 else 403
        REFUSALS.refused("websocket handshakes refused", f"HTTP {status}")
    return False


def check_address(address: str) -> str:
    if address == "localhost":
        return address
    try:
        ipaddress.ip_address(address)
    except ValueError as e:
        raise ValueError(f"--address {address!r} is not an IP address (use e.g. 127.0.0.1 behind a proxy)") from e
    return address


def serve_argv(address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> list[str]:
    """The command line that starts the participant server."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port (1-65535)")
    argv = [sys.executable, str(LAUNCHER), "run", str(PARTICIPANT_APP),
            "--server.address", check_address(address), "--server.port", str(port)]
    for option, value in HARDENED_OPTIONS.items():
        argv += [f"--{option}", value]
    return argv


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """One participant-server process per core this process may use."""
    return usable_cores()


def max_workers() -> int:
    """More workers than twice the cores only add memory (each is a whole server, ~150-200 MB) and lock waits."""
    return 2 * usable_cores()


def check_workers(workers: int) -> int:
    if workers < 1:
        raise ValueError(f"--workers {workers}: at least 1 participant-server process is needed")
    if workers > max_workers():
        raise ValueError(f"--workers {workers} is more than this machine can use: at most {max_workers()} "
                         f"(twice its {usable_cores()} cores; each worker is a whole server process)")
    return workers


def _port_free(address: str, port: int) -> bool:
    """Could a server bind `address`:`port` now (with SO_REUSEADDR, as the server does)?"""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    host = "127.0.0.1" if address == "localhost" else address
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(address: str, port: int, workers: int) -> list[int]:
    """The ports of `workers` workers from `port` on, each a TCP port that is free on `address` now."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port (1-65535)")
    ports = list(range(port, port + workers))
    if ports[-1] > 65535:
        raise ValueError(f"--port {port} with --workers {workers} needs ports up to {ports[-1]}, past 65535: "
                         "choose a lower --port")
    for slot, p in enumerate(ports):
        if not _port_free(address, p):
            which = f"worker {slot + 1} of {workers} listens on --port + {slot}" if workers > 1 else "the server's port"
            raise ValueError(f"port {p} on {address} is taken ({which}): stop what holds it or choose another --port")
    return ports


def prepare(db_path: str | Path) -> Path:
    """Check the database before the server starts (so a wrong path fails here, in one line, not at the
    first participant); returns its absolute path."""
    path = Path(db_path).resolve()
    db = open_db(path, create=False)
    try:
        if not list_studies(db):
            raise StudyDBError(f"{path} holds no study yet: create one with `python -m study create`")
    finally:
        db.close()
    return path


def serve(db_path: str | Path, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT,
          workers: int | None = None) -> int:
    """One worker: replace this process with the participant server (so its process id is the server's). More:
    supervise them here until stopped; returns the exit status. Every value is checked before anything starts."""
    workers = check_workers(default_workers() if workers is None else workers)
    check_address(address)
    path = prepare(db_path)  # a wrong database is named first, whatever holds the ports
    ports = check_ports(address, port, workers)
    env = {**os.environ, "STUDY_DB": str(path), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    # the server imports this very checkout's `study` (the launcher's folder comes first on its path otherwise,
    # and an editable install elsewhere would win)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PARTICIPANT_APP.parents[1]), os.environ.get("PYTHONPATH")) if p)
    if workers == 1:
        os.chdir(PARTICIPANT_APP.parent)  # no config.toml or secrets.toml of the lab's checkout applies
        os.execve(sys.executable, serve_argv(address, port), env)
    from .workers import Supervisor

    # the workers' folder is the app's too, for the same reason
    return Supervisor(lambda p: serve_argv(address, p), env, address, ports, PARTICIPANT_APP.parent).run()
