"""Train: start `python -m randmask train` as a background process and follow it. The job lives on disk
(runs/user/<name>/), so it keeps running across page switches, browser reloads and app restarts; finished models
appear in the sidebar's picker."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from randmask.core import settings
from randmask.core.models import DATASETS
from randmask.experiments.train_config import PRESETS
from randmask.views import job_progress, jobs, train_view

_ui.ensure_app()
st.title("Train a model")
st.caption(f"Jobs run as separate processes and write to {settings.user_runs_root()}. On this machine's CPU the "
           "quick preset takes hours for a full run; shrink epochs and training images for a first look.")

with st.form("train_form"):
    c1, c2, c3 = st.columns([3, 2, 2])
    with c1:
        notation = st.text_input("Notation", "0.7-Shallow", key="train_notation",
                                 help="e.g. 0.7-Shallow, 0.5-ShallowDC, 0.9-Shallow×2, 0.5-Deep, Normal ResNet-18")
    with c2:
        preset = st.selectbox("Preset", list(PRESETS), index=list(PRESETS).index("quick"), key="train_preset",
                              help=f"quick: width {PRESETS['quick']['width']}, one-cycle, {PRESETS['quick']['epochs']} epochs "
                                   f"(CPU, the zoo's recipe); paper: appendix D, {PRESETS['paper']['epochs']} epochs")
    with c3:
        dataset = st.selectbox("Data set", list(DATASETS), key="train_dataset")
    c4, c5, c6, c7 = st.columns(4)
    with c4:
        epochs = int(st.number_input("Epochs", 1, 400, 3, key="train_epochs"))
    with c5:
        width = int(st.number_input("Width (0 = preset's)", 0, 128, 0, step=4, key="train_width"))
    with c6:
        train_n = int(st.number_input("Training images (0 = all)", 0, 100_000, 0, step=1000, key="train_n"))
    with c7:
        eval_n = int(st.number_input("Test images (0 = all)", 0, 10_000, 1000, step=500, key="train_eval_n",
                                     help="How many test images measure the accuracy after each epoch"))
    ray = st.text_input("Ray cluster (empty = this machine)", "", key="train_ray", placeholder="auto or host:port",
                        help="auto: the Ray cluster running on this machine (or $RAY_ADDRESS); host:port: another's "
                             f"head. Its nodes must see {settings.user_runs_root()} at the same path.")
    if note := train_view.ray_note():
        st.caption(note)
    submitted = st.form_submit_button("Start training", type="primary")

if submitted:
    with _ui.readable_errors("Cannot start"):
        st.success(train_view.start_training(notation, preset, dataset, epochs, width, train_n, eval_n, ray))

STATE_ICON = {"starting": ":material/hourglass_top:", "running": ":material/directions_run:",
              "cancelling": ":material/pan_tool:", "done": ":green[:material/check_circle:]",
              "cancelled": ":material/stop_circle:", "failed": ":red[:material/error:]"}


def show_job(status: job_progress.JobStatus) -> None:
    with st.container(border=True):
        st.markdown(f"{STATE_ICON[status.state]} {train_view.job_title(status)}")
        if status.where:
            st.caption(status.where)
        if not status.finished or status.state == "done":
            st.progress(status.fraction, text=status.progress_text())
        note = train_view.job_note(status, zoo_accuracy)
        if note:
            st.caption(note)
        if status.history:
            history = train_view.history_series(status.history)
            fig = go.Figure()
            fig.add_scatter(x=history["epoch"], y=history["test"], name="test accuracy", mode="lines+markers")
            fig.add_scatter(x=history["epoch"], y=history["train"], name="training accuracy", mode="lines+markers")
            # the legend above the plot, on the left: Plotly's toolbar takes the top right corner on hover
            fig.update_layout(height=280, margin={"t": 40, "b": 10},
                              legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"})
            fig.update_xaxes(title="epoch", dtick=1)
            fig.update_yaxes(title="accuracy (%)", range=[0, 100])
            st.plotly_chart(fig, key=f"job_chart_{status.name}")
        b1, b2, _ = st.columns([1, 1, 5])
        if not status.finished:
            if b1.button("Cancel", key=f"cancel_{status.name}", disabled=status.state == "cancelling"):
                jobs.cancel_job(status.folder)
                st.rerun()
        else:
            resumable = train_view.resumable(status)
            if resumable and b1.button("Resume", key=f"resume_{status.name}"):
                with _ui.readable_errors("Cannot resume"):
                    jobs.resume_job(status.folder)
                    st.rerun()
            if (b2 if resumable else b1).button(
                    "Remove", key=f"remove_{status.name}",
                    help="Delete the folder" + (" and its model" if status.state == "done" else "")):
                with _ui.readable_errors("Cannot remove"):
                    jobs.remove_job(status.folder)
                    st.rerun()
        if status.state == "failed":
            with st.expander("Process output"):
                st.code(train_view.output_text(status), language=None)


zoo_accuracy = train_view.zoo_accuracies(_ui.catalog().entries)
any_running = train_view.any_running(job_progress.list_jobs())


@st.fragment(run_every=2 if any_running else None)
def job_list() -> None:
    statuses = job_progress.list_jobs()
    st.subheader("Jobs")
    if not statuses:
        st.info("No training jobs yet.")
        return
    for status in statuses:
        show_job(status)
    running, toast = train_view.job_changes(st.session_state.get("train_running_jobs", set()), statuses)
    st.session_state["train_running_jobs"] = running
    if toast:
        st.toast(toast)
        st.rerun()  # the whole app: the sidebar picker re-reads the finished models
    if running and not any_running:
        st.rerun()  # a job started since the page loaded: restart with polling on


job_list()
