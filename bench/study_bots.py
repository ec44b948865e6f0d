"""Browserless participants for the participant server: each speaks Streamlit's websocket protocol (BackMsg out,
ForwardMsg in) as the browser page and the trial widget do, so one process can carry hundreds of them.

A `Participant` opens the study link, consents, presses Start, answers the practice (the right answer, as the
widget's feedback teaches) and every image after, each after a think time, through the trial widget's component
value `{"seq": n, "answers": [...]}` sent as a fragment rerun, exactly what study/frontend/index.html sends. Like
the widget it keeps every answer the server has not acknowledged and sends them all again after a pause, and
after a dropped connection it opens a new session and goes on. An answer counts as stored when the server's reply
lists it in the widget's `handled` (the server renders that only after the answer's transaction committed) or,
for the last answer, when the completion page arrives. Each participant's connection carries
`X-Forwarded-For: <its own invented address>` (the server trusts it from a loopback peer, as from a proxy on the
same machine) and goes to the worker port its address hashes to, as a proxy's ip_hash would send it.

Also here: a consent-only visitor (`consent_only`), a tab that posts widget messages in a loop (`spam_tab`), and
a session that loads the page and leaves (`visit`).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

EARLY_FOR_RERUN = ForwardMsg.ScriptFinishedStatus.Value("FINISHED_EARLY_FOR_RERUN")
RETRY_S = (1.5, 3.0, 6.0, 10.0)  # the widget's pauses before it sends unacknowledged answers again
FINISHED_TEXT = "finished the study"


def worker_port(address: str, ports: list[int]) -> int:
    """The port a proxy hashing client addresses would pick for `address`."""
    return ports[int.from_bytes(hashlib.sha256(address.encode()).digest()[:4], "big") % len(ports)]


def invented_address(n: int, block: int = 10) -> str:
    return f"{block}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


class Refused(RuntimeError):
    """The server showed a message instead of the study (over the session cap, an error id, closed, full)."""


@dataclass
class Page:
    """What one script run (or fragment run) showed."""
    buttons: dict[str, str] = field(default_factory=dict)  # the widget key (last part of its id) -> widget id
    texts: list[str] = field(default_factory=list)
    widget_id: str | None = None
    fragment_id: str = ""
    args: dict | None = None  # the trial widget's arguments


class Session:
    """One websocket session of the participant server."""

    def __init__(self, ws, query: str) -> None:
        self.ws, self.query = ws, query
        self.page = Page()
        self.on_widget = None  # called with each trial-widget render (args) as it arrives
        self.on_text = None  # called with each text element as it arrives

    @classmethod
    async def open(cls, base: str, query: str, address: str | None, timeout_s: float = 30.0, **connect) -> Session:
        """`address`: sent as X-Forwarded-For (None: none). `connect`: more for websockets.connect, e.g. the
        `origin` a browser sends, or `local_addr` (a 127.x.y.z source address, to reach a proxy from many)."""
        headers = {"X-Forwarded-For": address} if address else {}
        ws = await websockets.connect(base.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"],
                                      max_size=None, additional_headers=headers, open_timeout=timeout_s, **connect)
        return cls(ws, query)

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, widgets: list[WidgetState] = (), fragment_id: str = "") -> None:
        msg = BackMsg()
        msg.rerun_script.query_string = self.query
        msg.rerun_script.widget_states.widgets.extend(widgets)
        if fragment_id:
            msg.rerun_script.fragment_id = fragment_id
        await self.ws.send(msg.SerializeToString())

    async def receive(self) -> tuple[str, ForwardMsg]:
        forward = ForwardMsg()
        forward.ParseFromString(await self.ws.recv())
        kind = forward.WhichOneof("type")
        if kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
            self._element(forward)
        return kind, forward

    def _element(self, forward: ForwardMsg) -> None:
        element = forward.delta.new_element
        kind = element.WhichOneof("type")
        if kind == "component_instance":
            self.page.widget_id = element.component_instance.id
            self.page.fragment_id = forward.delta.fragment_id
            self.page.args = json.loads(element.component_instance.json_args)
            if self.on_widget:
                self.on_widget(self.page.args)
        elif kind == "button":
            self.page.buttons[element.button.id.rsplit("-", 1)[-1]] = element.button.id
        elif kind in ("alert", "markdown", "heading"):
            text = getattr(element, kind).body
            self.page.texts.append(text)
            if self.on_text:
                self.on_text(text)

    async def run(self, widgets: list[WidgetState] = (), fragment_id: str = "", timeout_s: float = 60.0) -> Page:
        """Send a rerun and read until the run (and any rerun it asked for) finished: the page it showed."""
        self.page = Page()
        await self.send(widgets, fragment_id)
        return await self.until_finished(timeout_s)

    async def until_finished(self, timeout_s: float = 60.0) -> Page:
        deadline = time.monotonic() + timeout_s
        while True:
            kind, forward = await asyncio.wait_for(self.receive(), max(0.01, deadline - time.monotonic()))
            if kind == "new_session":
                self.page = Page()  # a rerun of the whole page starts over
            elif kind == "script_finished" and forward.script_finished != EARLY_FOR_RERUN:
                return self.page

    async def click(self, key: str, timeout_s: float = 60.0) -> Page:
        return await self.run([WidgetState(id=self.page.buttons[key], trigger_value=True)], timeout_s=timeout_s)


REFUSALS = ("error id", "Too many study pages", "link is not valid", "link does not work", "study is closed",
            "has been closed", "all the answers it needs", "places in this study are taken", "session timed out")


def _refusal(page: Page) -> str | None:
    """The participant page's message when it shows one instead of the study (pages/study_label.py)."""
    return next((text for text in page.texts if any(r in text for r in REFUSALS)), None)


@dataclass
class Result:
    pid: str
    address: str
    port: int
    given: dict[int, int] = field(default_factory=dict)  # assignment id -> label sent
    acked: set[int] = field(default_factory=set)  # ids the server confirmed as stored
    latencies_ms: list[float] = field(default_factory=list)  # answer sent -> confirmed stored
    sent: list[float] = field(default_factory=list)  # time.monotonic() each of those answers was sent
    first_image_s: float | None = None  # link opened -> first image (the widget's first render)
    answering_at: float | None = None  # time.monotonic() at the first image
    completed: bool = False
    reconnects: int = 0
    error: str | None = None


class Participant:
    """A scripted participant (see the module's docstring)."""

    def __init__(self, base_of_port: dict[int, str], query: str, pid: str, address: str, seed: int,
                 think_s: tuple[float, float] = (1.5, 2.5), feedback_s: tuple[float, float] = (0.5, 1.0),
                 give_up_s: float = 600.0, forwarded: bool = True, **connect) -> None:
        port = worker_port(address, sorted(base_of_port))
        self.base = base_of_port[port]
        self.query = f"{query}&PROLIFIC_PID={pid}"
        self.result = Result(pid, address, port)
        self.rng = random.Random(seed)
        self.think_s, self.feedback_s, self.give_up_s = think_s, feedback_s, give_up_s
        self.forwarded, self.connect = forwarded, connect  # without X-Forwarded-For (behind a real proxy); Session.open
        self.trials: dict[int, dict] = {}  # assignment id -> the widget's trial entry
        self.queue: list[dict] = []  # answers sent, not acknowledged yet
        self.sent_at: dict[int, float] = {}
        self.seq, self.retries, self.last_send = 0, 0, 0.0
        self.changed = asyncio.Event()

    # ----------------------------------------------------------------------------------------- server replies
    def _acknowledge(self, ids) -> None:
        now = time.monotonic()
        for assignment_id in ids:
            if assignment_id in self.sent_at and assignment_id not in self.result.acked:
                self.result.acked.add(assignment_id)
                self.result.latencies_ms.append(1000 * (now - self.sent_at[assignment_id]))
                self.result.sent.append(self.sent_at[assignment_id])
        before = len(self.queue)
        self.queue = [a for a in self.queue if a["assignment_id"] not in self.result.acked]
        if len(self.queue) < before:
            self.retries = 0

    def _widget(self, args: dict) -> None:
        if self.result.first_image_s is None and args.get("trials"):
            self.result.answering_at = time.monotonic()
            self.result.first_image_s = self.result.answering_at - self.opened
        self._acknowledge(args.get("handled", []))
        for assignment_id in args.get("rejected", []):  # asked again: answer it anew
            self.result.given.pop(assignment_id, None)
            self.queue = [a for a in self.queue if a["assignment_id"] != assignment_id]
        for trial in args.get("trials", []):
            self.trials.setdefault(trial["id"], trial)
        self.changed.set()

    def _text(self, text: str) -> None:
        if FINISHED_TEXT in text:  # stored every answer: the completion page replaced the widget
            self._acknowledge(list(self.sent_at))
            self.result.completed = True
            self.changed.set()

    # ----------------------------------------------------------------------------------------- answering
    def _next(self) -> dict | None:
        waiting = [t for t in self.trials.values() if t["id"] not in self.result.given]
        return min(waiting, key=lambda t: t["n"]) if waiting else None

    async def _transmit(self, session: Session) -> None:
        self.seq += 1
        self.last_send = time.monotonic()
        value = json.dumps({"seq": self.seq, "answers": self.queue})
        await session.send([WidgetState(id=session.page.widget_id, json_value=value)], session.page.fragment_id)

    async def _resend(self, session: Session) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self.queue and time.monotonic() - self.last_send > RETRY_S[min(self.retries, len(RETRY_S) - 1)]:
                self.retries += 1
                await self._transmit(session)

    async def _answer(self, session: Session) -> None:
        while not self.result.completed:
            trial = self._next()
            if trial is None:
                self.changed.clear()
                await self.changed.wait()
                continue
            await asyncio.sleep(self.rng.uniform(*self.think_s))
            label = trial["answer"] if trial["practice"] else self.rng.randrange(10)
            answer = {"assignment_id": trial["id"], "label": label, "rt_ms": round(self.rng.uniform(300, 2500), 1),
                      "shown_ms": None, "input": self.rng.choice(("keyboard", "click"))}
            self.result.given[trial["id"]] = label
            self.sent_at.setdefault(trial["id"], time.monotonic())
            self.queue.append(answer)
            await self._transmit(session)
            if trial["practice"]:
                await asyncio.sleep(self.rng.uniform(*self.feedback_s))  # reads the feedback, presses Continue

    async def _read(self, session: Session) -> None:
        while True:
            await session.receive()

    async def _session(self) -> None:
        session = await Session.open(self.base, self.query, self.result.address if self.forwarded else None,
                                     **self.connect)
        session.on_widget, session.on_text = self._widget, self._text
        try:
            page = await session.run()
            for _ in range(4):
                refusal = _refusal(page)
                if refusal:
                    raise Refused(refusal)
                if self.result.completed or page.args is not None:
                    break
                if "consent" in page.buttons:
                    await asyncio.sleep(self.rng.uniform(0.5, 1.5))  # reads the consent text
                    page = await session.click("consent")
                elif "start" in page.buttons:
                    page = await session.click("start")
                else:
                    raise Refused(f"unexpected page: {page.texts[:3]}")
            if self.result.completed:
                return
            if self.queue:  # a new session after a dropped one: what was not acknowledged goes again
                await self._transmit(session)
            tasks = [asyncio.create_task(c) for c in (self._read(session), self._resend(session), self._answer(session))]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a dropped connection raises here
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await session.close()

    async def run(self) -> Result:
        self.opened = time.monotonic()
        deadline = self.opened + self.give_up_s
        while not self.result.completed:
            try:
                await self._session()
            except Refused as e:
                self.result.error = str(e)[:200]
                break
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake, TimeoutError) as e:
                if time.monotonic() > deadline:
                    self.result.error = f"gave up after {self.result.reconnects} reconnects: {type(e).__name__}"
                    break
                self.result.reconnects += 1
                await asyncio.sleep(min(0.5 * self.result.reconnects, 3.0))  # the worker may be starting again
        return self.result


# ---------------------------------------------------------------------------------------------- other visitors
async def consent_only(base: str, query: str, pid: str, address: str) -> float:
    """Open the link with a fresh id, consent, leave: seconds it took (the item list is allocated at consent)."""
    began = time.monotonic()
    session = await Session.open(base, f"{query}&PROLIFIC_PID={pid}", address)
    try:
        page = await session.run()
        if "consent" in page.buttons:
            await session.click("consent")
    finally:
        await session.close()
    return time.monotonic() - began


async def spam_tab(base: str, query: str, pid: str, address: str, go: asyncio.Event, stop: asyncio.Event) -> int:
    """A tab of one consented participant posting trial-widget messages in a loop, each as soon as the previous
    run finished (or after a second): its first trial's answer, sent again and again as a widget resends it (each
    a fragment run with a write transaction). It loads the page, then waits for `go` (so every tab holds the same
    first trial); returns the messages it sent."""
    session = await Session.open(base, f"{query}&PROLIFIC_PID={pid}", address)
    sent = 0
    try:
        page = await session.run()
        for key in ("consent", "start"):
            if key in page.buttons:
                page = await session.click(key)
        if page.widget_id is None:
            return 0
        widget, fragment = page.widget_id, page.fragment_id
        first = page.args["trials"][0] if page.args and page.args["trials"] else None
        if first is None:
            return 0
        answer = {"assignment_id": first["id"], "label": first["answer"] if first["practice"] else 0, "rt_ms": 900.0,
                  "shown_ms": None, "input": "click"}
        await go.wait()
        while not stop.is_set():
            sent += 1
            value = json.dumps({"seq": sent, "answers": [answer]})
            session.page = Page()
            await session.send([WidgetState(id=widget, json_value=value)], fragment)
            with_timeout = asyncio.wait_for(session.until_finished(), 1.0)
            try:
                await with_timeout
            except TimeoutError:
                pass
    except (OSError, websockets.ConnectionClosed):
        pass  # the server closed it (e.g. over the session cap)
    finally:
        await session.close()
    return sent


async def visit(base: str, query: str, address: str | None, **connect) -> bool:
    """Load the page once and leave; True when the run finished."""
    return await visit_outcome(base, query, address, **connect) == "finished"


async def visit_outcome(base: str, query: str, address: str | None, **connect) -> str:
    """Load the page once and leave: 'finished', 'refused' (over the session cap) or what went wrong."""
    try:
        session = await Session.open(base, query, address, **connect)
    except (OSError, websockets.InvalidHandshake, TimeoutError) as e:
        return f"open: {type(e).__name__}"
    try:
        page = await session.run(timeout_s=60)
        return "refused" if any("Too many study pages" in t for t in page.texts) else "finished"
    except (OSError, websockets.ConnectionClosed, TimeoutError) as e:
        return f"run: {type(e).__name__}"
    finally:
        await session.close()
