"""The participant server's script: `python -m study serve --db DB` runs it (not `streamlit run` by hand).

It sits alone in this folder on purpose: with a `pages/` folder beside it, Streamlit would serve every
page there. It runs the labeling page's code for every path and query (no st.navigation, so an unknown
path shows the labeling flow, not a "page not found" dialog), and nothing else. Before that, the session
guard (study/guard.py) caps sessions per client address; a background sweep closes sessions that have
not consented within the idle time, so a script holding websockets open holds nothing for long, and shuts
down sessions whose browser left (after one sweep's grace for a reconnect).
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from study.errors import REFUSALS, configure_logging
from study.guard import SessionGuard, client_address
from study.workers import session_guard_from_env

ROOT = Path(__file__).resolve().parents[1]
LABEL_PAGE = ROOT / "pages" / "study_label.py"
# the labeling page imports the study package: installed with the project (pip install -e .), no path tricks


@st.cache_resource(show_spinner=False)
def _page_code():
    return compile(LABEL_PAGE.read_text(encoding="utf-8"), str(LABEL_PAGE), "exec")


async def _close(session_id: str) -> None:
    """On the server's event loop: close the session's websocket (the browser sees a closed connection) and
    drop the session with its state. Uses Streamlit internals where it has no public call; skipped without."""
    runtime = Runtime.instance()
    info = runtime._session_mgr.get_active_session_info(session_id)
    websocket = getattr(info.client, "_websocket", None) if info else None
    if websocket is not None:
        try:
            await websocket.close(code=1008)  # policy violation
        except Exception:  # already closed by the browser
            pass
    runtime.close_session(session_id)


async def _sweep(guard: SessionGuard) -> None:
    runtime = Runtime.instance()
    active = {info.session.id for info in runtime._session_mgr.list_active_sessions()}
    guard.keep_only(active)
    for session_id in guard.idle():
        await _close(session_id)
    stored = {info.session.id for info in runtime._session_mgr.list_sessions()} - active
    for session_id in guard.gone(stored):
        runtime.close_session(session_id)


def _sweeper(guard: SessionGuard, loop: asyncio.AbstractEventLoop) -> None:
    while not loop.is_closed():
        time.sleep(min(5.0, guard.idle_before_consent_s / 2))
        REFUSALS.flush()  # the counts a burst of refusals left held back, once its minute is over
        try:
            asyncio.run_coroutine_threadsafe(_sweep(guard), loop).result(timeout=30)
        except Exception as e:
            if loop.is_closed() or not loop.is_running():  # the server is stopping
                return
            guard.refusals.refused("session sweeps that failed", f"{type(e).__name__}: {e}")  # try again next time


@st.cache_resource(show_spinner=False)
def _guard() -> tuple[SessionGuard, asyncio.AbstractEventLoop]:
    configure_logging()
    guard = session_guard_from_env()  # under `serve --workers N`, its per-address cap counts every worker's sessions
    loop = Runtime.instance()._get_async_objs().eventloop
    threading.Thread(target=_sweeper, args=(guard, loop), name="study-session-sweep", daemon=True).start()
    return guard, loop


@st.cache_resource(show_spinner=False)
def _icon() -> bytes:
    """A plain favicon served by this server (a Material icon made the browser fetch a font from the internet)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (49, 51, 63)).save(buffer, format="PNG")
    return buffer.getvalue()


st.set_page_config(page_title="Image labeling study", page_icon=_icon(), layout="centered",
                   initial_sidebar_state="collapsed", menu_items={})
# the session's id only: a global holding the run's context kept every run's thread, runner and session state alive
# (Streamlit's hash stack, a weak-keyed dict by thread, holds each cached function, whose globals are these)
this_session = get_script_run_ctx().session_id
guard, loop = _guard()
address = client_address(st.context.ip_address or "127.0.0.1", st.context.headers)
if not guard.has_room(this_session, address):  # sessions closed since the last sweep may have made room
    asyncio.run_coroutine_threadsafe(_sweep(guard), loop).result(timeout=10)
if not guard.admit(this_session, address):
    st.info("Too many study pages are open from your network. Please close the other tabs and reload this one.")
    # closed a moment later, so the line above reaches the browser first
    loop.call_soon_threadsafe(loop.call_later, 2.0, lambda sid=this_session: loop.create_task(_close(sid)))
    st.stop()
try:
    exec(_page_code(), {"__name__": "__main__", "__file__": str(LABEL_PAGE)})
finally:
    if st.session_state.get("_consented"):
        guard.consented(this_session)
