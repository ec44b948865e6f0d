"""Start Streamlit for the participant server (`python -m study serve` calls this; arguments as `streamlit ...`).

Same as `python -m streamlit`, less one thing: Streamlit polls its config.toml files five times a second
to reload them. An idle participant server spent 4.5 ms of CPU per second with the pollers and 2.0 without
(py-spy showed the pollers' thread hand-offs as nearly all of it; 2-core machine under load), which at one
participant answering every two seconds was more than the answers themselves. The participant server's settings all come from its command line, so the
pollers go; with a Streamlit that has no such hook, this is plain `streamlit`. It also puts the participant
headers (study.serve.ParticipantHeaders) in front of Streamlit's middleware.
"""
import sys

from streamlit.web import bootstrap, cli

if hasattr(bootstrap, "_install_config_watchers"):
    bootstrap._install_config_watchers = lambda *args, **kwargs: None


def _with_participant_headers() -> None:
    """Put study.serve.ParticipantHeaders in front of Streamlit's own middleware (frame headers, hidden metrics)."""
    from starlette.middleware import Middleware
    from streamlit.web.server.starlette import starlette_app

    from study.serve import ParticipantHeaders

    original = starlette_app.create_streamlit_middleware
    starlette_app.create_streamlit_middleware = lambda: [Middleware(ParticipantHeaders), *original()]


_with_participant_headers()

if __name__ == "__main__":
    sys.exit(cli.main(prog_name="streamlit"))
