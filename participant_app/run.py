"""Start Streamlit for the participant server (`python -m study serve` calls this; arguments as `streamlit ...`).

Same as `python -m streamlit`, less one thing: Streamlit polls its config.toml files five times a second
to reload them. An idle participant server spent 4.5 ms of CPU per second with the pollers and 2.0 without
(py-spy showed the pollers' thread hand-offs as nearly all of it; 2-core machine under load), which at one
participant answering every two seconds was more than the answers themselves. The participant server's settings all come from its command line, so the
pollers go; with a Streamlit that has no such hook, this is plain `streamlit`. It also puts the participant
headers and the websocket intake limits (study.serve.ParticipantHeaders, ParticipantIntake) in front of
Streamlit's middleware, and sends every message from a browser through the study's gate (study.guard.RerunGate)
before Streamlit handles it.
"""
import asyncio
import sys
import weakref

from streamlit.web import bootstrap, cli

if hasattr(bootstrap, "_install_config_watchers"):
    bootstrap._install_config_watchers = lambda *args, **kwargs: None


def _with_participant_headers() -> None:
    """Put study.serve.ParticipantHeaders in front of Streamlit's own middleware (frame headers, hidden metrics)."""
    from starlette.middleware import Middleware
    from streamlit.web.server.starlette import starlette_app

    from study.serve import ParticipantHeaders, ParticipantIntake

    original = starlette_app.create_streamlit_middleware
    starlette_app.create_streamlit_middleware = lambda: [Middleware(ParticipantHeaders), Middleware(ParticipantIntake),
                                                         *original()]


def _with_message_gate() -> None:
    """Runtime.handle_backmsg (on the server's event loop, for each message a browser sends) passes heartbeats
    on, drops the kinds the participant page never sends, and hands rerun requests to the study's RerunGate, so
    a request over budget waits (folded with later ones) before it costs a script run. Streamlit has no public
    hook here; with a Streamlit that lacks this method, only the intake limits above apply."""
    from streamlit.runtime import Runtime

    from study.guard import PAGE_MESSAGES, RerunGate, client_address, participant_key

    original = getattr(Runtime, "handle_backmsg", None)
    if original is None:
        return
    gate = RerunGate(lambda delay, callback: asyncio.get_running_loop().call_later(delay, callback))
    addresses: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client connection -> its address

    def address_of(runtime, session_id: str, client) -> str:
        try:
            client = client or runtime._session_mgr.get_active_session_info(session_id).client
            address = addresses.get(client)
            if address is None:
                context = client.client_context
                address = addresses[client] = client_address(context.remote_ip, dict(context.headers))
            return address
        except Exception as e:  # no address to be had (Streamlit changed): the session counts as its own address
            gate.refusals.refused("sessions without a client address (each budgeted as its own)", type(e).__name__)
            return f"session {session_id}"

    def handle_backmsg(self, session_id: str, msg, *, client=None) -> None:
        kind = msg.WhichOneof("type")
        if kind not in PAGE_MESSAGES:
            gate.refusals.refused("browser messages the participant page never sends", str(kind))
            return
        if kind != "rerun_script":
            original(self, session_id, msg, client=client)
            return
        gate.offer(session_id, address_of(self, session_id, client), participant_key(msg.rerun_script.query_string),
                   msg, lambda message: original(self, session_id, message, client=client))

    Runtime.handle_backmsg = handle_backmsg


def _quiet_handshakes() -> None:
    """uvicorn's line per websocket handshake goes (study.serve.handshake_log_filter)."""
    import logging

    from study.serve import handshake_log_filter

    logging.getLogger("uvicorn.error").addFilter(handshake_log_filter)  # kept when uvicorn configures its logging


_with_participant_headers()
_with_message_gate()
_quiet_handshakes()

if __name__ == "__main__":
    sys.exit(cli.main(prog_name="streamlit"))
