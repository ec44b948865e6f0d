"""Start Streamlit for the participant server (`python -m study serve` calls this; arguments as `streamlit ...`).

Same as `python -m streamlit`, less one thing: Streamlit polls its config.toml files five times a second
to reload them. An idle participant server spent 4.5 ms of CPU per second with the pollers and 2.0 without
(py-spy showed the pollers' thread hand-offs as nearly all of it; 2-core machine under load), which at one
participant answering every two seconds was more than the answers themselves. The participant server's settings all come from its command line, so the
pollers go; with a Streamlit that has no such hook, this is plain `streamlit`.
"""
import sys

from streamlit.web import bootstrap, cli

if hasattr(bootstrap, "_install_config_watchers"):
    bootstrap._install_config_watchers = lambda *args, **kwargs: None

if __name__ == "__main__":
    sys.exit(cli.main(prog_name="streamlit"))
