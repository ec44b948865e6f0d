"""A browser-less participant for the participant server: one tab speaking Streamlit's websocket protocol (BackMsg
up, ForwardMsg down), enough to load the page, click its buttons and answer through the trial widget. Used by the
session and fairness tests; holds no tests itself."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

EARLY = "FINISHED_EARLY_FOR_RERUN"


@dataclass
class Page:
    """What one script run (and the runs it asked for with st.rerun) put on the page."""
    texts: list[str] = field(default_factory=list)
    buttons: dict[str, str] = field(default_factory=dict)  # label -> widget id
    widget_id: str | None = None  # the trial widget's
    widget_args: dict | None = None
    fragment_id: str = ""

    def says(self, words: str) -> bool:
        return any(words in text for text in self.texts)

    def button(self, start: str) -> str:
        return next(wid for label, wid in self.buttons.items() if label.startswith(start))


def _text_of(element) -> str | None:
    kind = element.WhichOneof("type")
    if kind in ("markdown", "alert", "heading", "text"):
        return getattr(element, kind).body
    if kind == "code":
        return element.code.code_text
    return None


def back_rerun(query: str, widgets: list | None = None, fragment_id: str = "") -> bytes:
    """A rerun request as the browser sends it: the query string, widget states, and the fragment to rerun."""
    msg = BackMsg()
    msg.rerun_script.query_string = query
    msg.rerun_script.fragment_id = fragment_id
    for state in widgets or []:
        msg.rerun_script.widget_states.widgets.append(state)
    return msg.SerializeToString()


def click(widget_id: str):
    state = BackMsg().rerun_script.widget_states.widgets.add()
    state.id, state.trigger_value = widget_id, True
    return state


def component_value(widget_id: str, value: object):
    state = BackMsg().rerun_script.widget_states.widgets.add()
    state.id, state.json_value = widget_id, json.dumps(value)
    return state


class Tab:
    """One open participant page. `async with Tab(url, query) as tab: page = await tab.run()`."""

    def __init__(self, url: str, query: str, timeout_s: float = 60.0, address: str | None = None) -> None:
        """`address`: the client address the server sees (sent as a local proxy would, in X-Forwarded-For)."""
        self.url, self.query, self.timeout_s = url.replace("http", "ws", 1) + "/_stcore/stream", query, timeout_s
        self.headers = {"X-Forwarded-For": address} if address else {}
        self.ws = None
        self.widget_id: str | None = None
        self.fragment_id = ""
        self.seq = 0

    async def __aenter__(self) -> Tab:
        self.ws = await websockets.connect(self.url, subprotocols=["streamlit"], max_size=None,
                                          open_timeout=self.timeout_s, additional_headers=self.headers)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def run(self, widgets: list | None = None, fragment: bool = False) -> Page:
        """Send one rerun request and collect the page until the run ends (following st.rerun)."""
        await self.ws.send(back_rerun(self.query, widgets, self.fragment_id if fragment else ""))
        return await self.collect()

    async def collect(self) -> Page:
        page = Page()
        deadline = time.monotonic() + self.timeout_s
        while True:
            msg = ForwardMsg()
            msg.ParseFromString(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            kind = msg.WhichOneof("type")
            if kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                element = msg.delta.new_element
                if element.WhichOneof("type") == "button":
                    page.buttons[element.button.label] = element.button.id
                elif element.WhichOneof("type") == "component_instance":
                    page.widget_id = self.widget_id = element.component_instance.id
                    page.widget_args = json.loads(element.component_instance.json_args)
                    page.fragment_id = self.fragment_id = msg.delta.fragment_id
                elif (text := _text_of(element)) is not None:
                    page.texts.append(text)
            elif kind == "script_finished" and ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished) != EARLY:
                return page

    async def click(self, label_start: str, page: Page) -> Page:
        return await self.run([click(page.button(label_start))])

    async def answer(self, answers: list[dict]) -> Page:
        """Send the trial widget's value (every answer not yet acknowledged), as the widget does."""
        self.seq += 1
        return await self.run([component_value(self.widget_id, {"seq": self.seq, "answers": answers})], fragment=True)


def answer_for(trial: dict, label: int = 0, rt_ms: float = 500.0) -> dict:
    return {"assignment_id": trial["id"], "label": label, "rt_ms": rt_ms, "shown_ms": None, "input": "click"}


async def first_trials(tab: Tab) -> Page:
    """Load the page, consent, read the instructions (when shown): the page holding the first trials."""
    page = await tab.run()
    if "I agree and want to take part" in page.buttons:
        page = await tab.click("I agree", page)
    if "Start" in page.buttons:
        page = await tab.click("Start", page)
    if not (page.widget_args and page.widget_args["trials"]):
        raise AssertionError(f"no trials on the page: {page.texts}")
    return page


# ------------------------------------------------------------------------------------------------ a spammer
async def _drain(ws) -> None:
    try:
        async for _ in ws:
            pass
    except websockets.ConnectionClosed:
        pass


async def spam_tab(url: str, query: str, until: float, per_second: float, counts: list[int],
                   address: str | None = None) -> None:
    """One tab of a consented participant that sends widget messages in a loop: the trial widget's value (with an
    answer that is not the current one, so each is refused by the database) as a fragment rerun, and full reruns,
    alternately, at `per_second`, reading (and dropping) whatever comes back."""
    async with Tab(url, query, address=address) as tab:
        page = await first_trials(tab)
        wrong = answer_for(page.widget_args["trials"][-1])
        drain = asyncio.create_task(_drain(tab.ws))
        try:
            while (now := time.monotonic()) < until and not drain.done():
                tab.seq += 1
                value = component_value(tab.widget_id, {"seq": tab.seq, "answers": [wrong]})
                await tab.ws.send(back_rerun(query, [value], tab.fragment_id if tab.seq % 2 else ""))
                counts[0] += 1
                await asyncio.sleep(max(0.0, now + 1 / per_second - time.monotonic()))
        except websockets.ConnectionClosed:
            pass
        finally:
            drain.cancel()


async def spam(url: str, query: str, tabs: int, seconds: float, per_second: float, address: str | None = None) -> int:
    """`tabs` spamming tabs of the participant in `query` for `seconds`; returns the messages sent. The first tab
    consents alone (tabs consenting at once would each allocate)."""
    until, counts = time.monotonic() + seconds, [0]
    async with Tab(url, query, address=address) as tab:
        await first_trials(tab)
    await asyncio.gather(*(spam_tab(url, query, until, per_second, counts, address) for _ in range(tabs)),
                         return_exceptions=True)
    return counts[0]


if __name__ == "__main__":  # python tests/study_ws.py URL QUERY TABS SECONDS PER_SECOND [ADDRESS]: spam from its own process
    import sys

    sent = asyncio.run(spam(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
                            sys.argv[6] if len(sys.argv) > 6 else None))
    print(f"sent {sent}", flush=True)
