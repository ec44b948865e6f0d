"""randmask's Streamlit app: `streamlit run app.py`.

Researchers get every page and the model picker in the sidebar. When the server listens on anything but
loopback (.streamlit/config.toml says 127.0.0.1; Streamlit's own default is every interface), the pages need
the lab password first ($RANDMASK_APP_PASSWORD, else $STUDY_ADMIN_PASSWORD). A participant of the human study (the link carries
?pid= or ?PROLIFIC_PID=) gets the labeling page only: no navigation, no sidebar, nothing else; crowds should
reach that page through the participant server, `python -m study serve`, not through this app.
"""
from __future__ import annotations

from pathlib import Path

from randmask.core.settings import apply_openmp_wait_policy

# Before torch loads its OpenMP runtime: idle threads spin briefly, then sleep. With a training job on the same
# cores, endless spinning made an 8-image PGD16 gallery take 72 s instead of 3 s (2-core machine, measured).
apply_openmp_wait_policy()

import streamlit as st  # noqa: E402

ROOT = Path(__file__).resolve().parent

PAGES = ROOT / "pages"
PARTICIPANT_KEYS = ("pid", "PROLIFIC_PID")


def participant_view() -> None:
    label = PAGES / "study_label.py"
    if not label.exists():
        st.error("The study's labeling page is not installed on this server. Please contact the organiser.")
        st.stop()
    st.navigation([st.Page(label, title="Study", default=True)], position="hidden").run()


@st.cache_resource(show_spinner=False)
def _lab_lockout():
    from study.auth import ProcessLockout

    return ProcessLockout()  # one per server process, keyed by client: a reload or new session resets nothing


def lab_gate() -> None:
    """Stop here unless the app listens on loopback only or this session gave the lab password."""
    from streamlit import config

    from study.auth import is_loopback

    address = config.get_option("server.address")
    if is_loopback(address) or (address is None and config.get_option("global.appTest")) or st.session_state.get("lab_ok"):
        return  # (AppTest opens no socket at all unless a test sets an address)
    # the sign-in as the only, hidden page: without st.navigation Streamlit stays in its pages/ mode, whose sidebar
    # lists every page file to whoever opens the link
    st.navigation([st.Page(_sign_in, title="randmask", default=True)], position="hidden").run()
    st.stop()


def _sign_in() -> None:
    from study.auth import AdminNotConfigured, app_password

    st.title("randmask")
    try:
        expected = app_password(st.secrets)
    except AdminNotConfigured as e:
        st.error(f"This app is reachable from other machines, so it needs a password, and none is usable: {e}. "
                 "Or run it for this machine only: `streamlit run app.py --server.address 127.0.0.1`.")
        st.stop()
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from study.auth import client_keys
    from study.guard import client_address

    lockout = _lab_lockout()
    ctx = get_script_run_ctx()  # failures count per address and session: a stranger locks out only themselves
    keys = client_keys(client_address(st.context.ip_address or "127.0.0.1", st.context.headers),
                       ctx.session_id if ctx else None)
    wait = lockout.locked_for(keys)
    if wait > 0:
        st.error(f"Too many wrong passwords. Try again in {int(wait) + 1} s.")
        st.stop()
    with st.form("lab-sign-in", clear_on_submit=True):  # the typed password does not stay in the session
        given = st.text_input("Lab password", type="password", key="lab_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        attempt = lockout.check(given or "", expected, keys)
        if attempt.ok:
            st.session_state["lab_ok"] = True
            st.rerun()
        st.error("Wrong password." if attempt.locked_for_s <= 0 else
                 f"Wrong password. Too many wrong passwords: try again in {int(attempt.locked_for_s) + 1} s.")
    st.stop()


def researcher_view() -> None:
    lab_gate()
    from pages import _ui

    st.set_page_config(page_title="randmask", page_icon=":material/grid_on:", layout="wide")
    pages = {
        "home": st.Page(PAGES / "home.py", title="Home", icon=":material/home:", default=True),
        "masks": st.Page(PAGES / "masks.py", title="Mask patterns", icon=":material/grid_on:"),
        "shuffle": st.Page(PAGES / "shuffle.py", title="Patch shuffle", icon=":material/shuffle:"),
        "noise": st.Page(PAGES / "noise.py", title="Noise curves", icon=":material/grain:"),
        "gallery": st.Page(PAGES / "gallery.py", title="Adversarial gallery", icon=":material/photo_library:"),
        "robustness": st.Page(PAGES / "robustness.py", title="Robustness explorer", icon=":material/table_chart:"),
        "train": st.Page(PAGES / "train.py", title="Train", icon=":material/model_training:"),
    }
    sections = {
        "Explore": [pages[k] for k in ("home", "masks", "shuffle", "noise", "gallery")],
        "Reproduce": [pages["robustness"], pages["train"]],
    }
    if (PAGES / "study_admin.py").exists():
        pages["study_admin"] = st.Page(PAGES / "study_admin.py", title="Study admin", icon=":material/lock:")
        sections["Human study"] = [pages["study_admin"]]
    navigation = st.navigation(sections)
    _ui.register_pages(pages)
    _ui.pixelated()
    if navigation.url_path != "study_admin":  # the organiser page needs no models: its Study selector comes first
        _ui.sidebar()
    with _ui.readable_errors("This page hit an error"):  # a safety net: pages catch what they expect
        navigation.run()


if any(key in st.query_params for key in PARTICIPANT_KEYS):
    participant_view()
else:
    researcher_view()
