"""Organiser page of the human study: create and close studies, watch progress, exclude, download.

Behind the password in $STUDY_ADMIN_PASSWORD or `study_admin_password` in .streamlit/secrets.toml.
The database is $STUDY_DB (default study_data/study.db).
"""
from __future__ import annotations

import os

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from pages._ui import ensure_app, fitted_table
from study import DesignError, StudyDBError, get_study, list_studies, open_db, set_status
from study.admin import create_from_form, exclude_failing, failing_catch, find_sets, overview, set_excluded
from study.auth import AdminNotConfigured, check_password, client_keys, configured_password, locked_for
from study.display import (
    counts_text,
    exclude_label,
    failing_text,
    participants_table,
    progress_bar,
    readable,
    retry_text,
)
from study.export import csv_bytes, export_frames, export_zip, participants_frame
from study.guard import client_address
from study.plan import PlanInput, make_plan, plan_text, power_figure
from study.report import (
    IMAGES_HEADING,
    IMAGES_NOTE,
    enlarged,
    figures,
    headline,
    model_labels,
    report_html,
    sections,
)
from study.results import compute_results
from study.serve import DEFAULT_BASE_URL
from study.sets import SetError, load_cifar10h
from study.validate import participant_link


def sign_in_keys() -> list[str]:
    """This visitor's address (behind a local proxy: the address it forwards) and browser session."""
    ctx = get_script_run_ctx()
    address = client_address(st.context.ip_address or "127.0.0.1", st.context.headers)
    return client_keys(address, ctx.session_id if ctx else None)


def sign_in(db, expected: str) -> bool:
    """Failures and lockouts are counted in the database per client address and session, so a reload or a new
    browser does not reset them, and a stranger's guesses never lock the organiser out."""
    state = st.session_state
    if state.get("admin_ok"):
        return True
    keys = sign_in_keys()
    wait = locked_for(db, keys=keys)
    if wait > 0:
        st.error(f"Too many wrong passwords. Try again in {retry_text(wait)}.")
        return False
    with st.form("sign-in", clear_on_submit=True):  # the typed password does not stay in the session
        given = st.text_input("Organiser password", type="password", key="admin_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        attempt = check_password(db, given or "", expected, keys=keys)
        if attempt.ok:
            state["admin_ok"] = True
            st.rerun()
        if attempt.locked_for_s > 0:
            st.error(f"Wrong password. Too many wrong passwords: try again in {retry_text(attempt.locked_for_s)}.")
        else:
            st.error("Wrong password.")
    return False


@st.fragment(run_every=10)
def live_progress(slug: str) -> None:
    """Refreshes itself every 10 s with its own short-lived connection."""
    db = open_db(create=False)
    try:
        study = get_study(db, slug)
        o = overview(db, study)
        done, text = progress_bar(o, study.labels_per_item)
        st.progress(done, text=text)
        cols = st.columns(4)
        cols[0].metric("Participants", o.participants)
        cols[1].metric("Consented", o.consented)
        cols[2].metric("Completed", o.completed)
        cols[3].metric("Excluded", o.excluded)
        st.dataframe(readable(o.per_condition), hide_index=True)
    finally:
        db.close()


def studies_tab(db, study) -> None:
    if st.toggle("Live progress (refresh every 10 s)", value=True, key="live"):
        live_progress(study.slug)
    else:
        static_progress(db, study)
    base = st.text_input("Participant server address (as participants reach it)", DEFAULT_BASE_URL, key="base-url")
    try:
        st.write("Participant link for Prolific (it fills in the ids):")
        st.code(participant_link(base, study.slug, study.link_key), language=None)
        st.write("Without Prolific (replace the participant id):")
        st.code(participant_link(base, study.slug, study.link_key, prolific=False), language=None)
    except ValueError:
        st.write(f"Link key: `{study.link_key}`; enter the server's address above (https://host) to see the full link.")
    st.write(f"Completion code: `{study.completion_code}`. Status: **{study.status}**.")
    if study.status == "open":
        if st.button("Close study (no more answers)", key="close-study"):
            set_status(db, study.slug, "closed")
            st.rerun()
    elif st.button("Reopen study", key="open-study"):
        set_status(db, study.slug, "open")
        st.rerun()


def static_progress(db, study) -> None:
    o = overview(db, study)
    done, text = progress_bar(o)
    st.progress(done, text=text)
    st.write(counts_text(o))
    st.dataframe(readable(o.per_condition), hide_index=True)


def participants_tab(db, study) -> None:
    frame = participants_frame(db, study)
    fitted_table(participants_table(frame), "participants-all-columns", what="; the export has them all")
    if frame.empty:
        return
    threshold = st.slider("Minimum catch-trial accuracy", 0.0, 1.0, 0.5, 0.05, key="catch-threshold")
    failing = failing_catch(db, study, threshold)
    st.write(failing_text(failing, threshold))
    if failing and st.button(exclude_label(len(failing)), key="exclude-failing"):
        exclude_failing(db, study.slug, failing, threshold)
        st.rerun()
    uid = st.selectbox("Participant", frame["participant"].tolist(), key="one-participant")
    reason = st.text_input("Reason", key="exclusion-reason", max_chars=200)
    c1, c2 = st.columns(2)
    if c1.button("Exclude", key="exclude-one"):
        set_excluded(db, study.slug, uid, True, reason)
        st.rerun()
    if c2.button("Include again", key="include-one"):
        set_excluded(db, study.slug, uid, False)
        st.rerun()


def create_tab(db) -> None:
    root = st.text_input("Look for set folders under", os.environ.get("STUDY_SETS", "."), key="sets-root")
    found = find_sets(root)
    if found.empty:
        st.caption(f"No set folders (with a meta.csv) found under {root!r}, three levels deep.")
    else:
        st.dataframe(found, hide_index=True)
    with st.form("create-study"):
        slug = st.text_input("Name (used in links)", key="new-slug", max_chars=40)
        title = st.text_input("Title", key="new-title", max_chars=200)
        picked = st.multiselect("Sets for the study's conditions", found["folder"].tolist(), key="new-picked")
        sets = st.text_area("Other set folders, one per line", key="new-sets")
        catch_set = st.text_input("Catch-trial set folder (clean, unambiguous images)", key="new-catch")
        practice_set = st.text_input("Practice set folder (optional)", key="new-practice")
        c = st.columns(4)
        k = c[0].number_input("Labels per item", 1, 100, 3, key="new-k")
        n = c[1].number_input("Items per participant", 1, 1000, 12, key="new-n")
        n_catch = c[2].number_input("Catch trials per participant", 0, 100, 2, key="new-catch-n")
        ms = c[3].number_input("Presentation ms (0 = until answered)", 0, 10_000, 0, key="new-ms")
        code = st.text_input("Completion code (empty: random)", key="new-code", max_chars=40)
        redirect = st.text_input("Redirect URL at the end (https://..., optional)", key="new-redirect")
        submitted = st.form_submit_button("Create study")
    if submitted:
        try:
            config = create_from_form(db, slug=slug, title=title, sets=sets, catch_set=catch_set,
                                      practice_set=practice_set, labels_per_item=k, items_per_participant=n,
                                      catch_per_participant=n_catch, presentation_ms=ms, completion_code=code,
                                      redirect_url=redirect, picked_sets=picked)
        except (DesignError, SetError) as e:
            st.error(f"Not created: {e}")
        else:
            st.success(f"Created study {config.slug}.")


def plan_form() -> None:
    """study.plan: how many participants a study needs, before creating it."""
    with st.form("plan-study"):
        c = st.columns(2)
        conditions = c[0].text_input("Conditions, comma-separated (the first is the reference)",
                                     "clean, PGD16-vs-Normal ResNet-18", key="plan-conditions")
        accuracy = c[1].text_input("Expected human accuracy per condition", "0.9, 0.7", key="plan-accuracy")
        c = st.columns(4)
        difference = c[0].number_input("Smallest drop worth detecting", 0.01, 0.9, 0.10, 0.01, key="plan-difference")
        alpha = c[1].number_input("α", 0.001, 0.2, 0.05, 0.01, key="plan-alpha")
        power = c[2].number_input("Power", 0.5, 0.99, 0.80, 0.05, key="plan-power")
        items = c[3].number_input("Images per condition", 1, 100_000, 100, key="plan-items")
        c = st.columns(4)
        per_participant = c[0].number_input("Images per participant", 1, 1000, 30, key="plan-n")
        seconds = c[1].number_input("Seconds per image", 0.5, 60.0, 4.0, 0.5, key="plan-seconds")
        pay = c[2].number_input("Pay per hour", 0.0, 1000.0, 12.0, 0.5, key="plan-pay")
        fee = c[3].number_input("Platform fee (share of pay)", 0.0, 2.0, 0.0, 0.05, key="plan-fee")
        submitted = st.form_submit_button("Plan")
    if not submitted:
        return
    try:
        made = make_plan(PlanInput(
            conditions=[x.strip() for x in conditions.split(",") if x.strip()],
            accuracy=[float(x) for x in accuracy.split(",") if x.strip()], difference=difference, alpha=alpha,
            power=power, items_per_condition=int(items), items_per_participant=int(per_participant),
            seconds_per_item=seconds, pay_per_hour=pay, fee_share=fee))
    except ValueError as e:  # PlanError, or a number that does not parse
        st.error(f"No plan: {e}")
        return
    st.text(plan_text(made))
    st.plotly_chart(power_figure(made), key="plan-curve")


def export_tab(db, study) -> None:
    n_boot = st.number_input("Bootstrap resamples", 100, 20_000, 2000, step=100, key="n-boot")
    cifar10h_path = st.text_input("CIFAR-10H counts.npy (empty: $RANDMASK_DATA/cifar10h/counts.npy)", key="c10h")
    if not st.button("Prepare export", key="prepare-export"):
        return
    try:
        counts = load_cifar10h(cifar10h_path.strip() or None)
    except SetError as e:
        counts = None
        st.info(f"No CIFAR-10H comparison: {e}")
    frames = export_frames(db, study, cifar10h=counts, n_boot=int(n_boot))
    fitted_table(readable(frames["summary.csv"]), None, what="summary.csv has them all")
    st.download_button("Download all (zip)", export_zip(frames, study), f"{study.slug}-export.zip", "application/zip", key="dl-zip")
    for name, frame in frames.items():
        st.download_button(f"Download {name}", csv_bytes(frame), f"{study.slug}-{name}",
                           "text/csv", key=f"dl-{name}")


def cifar10h_or_none():
    try:
        return load_cifar10h()
    except SetError:
        return None


def show_results(db, study) -> None:
    """study.results laid out: the same sections, tables and figures as `python -m study report`."""
    results = compute_results(db, study, cifar10h=cifar10h_or_none(), n_boot=1000)
    st.write(headline(results))
    for note in results.notes:
        st.caption(note)
    if results.empty:
        st.info("No answers to trial images yet.")
        return
    made = figures(results)
    for heading, note, table, name in sections(results):
        st.subheader(heading)
        if note:
            st.caption(note)
        if table is not None:
            st.dataframe(table, hide_index=True)
        st.plotly_chart(made[name], key=f"results-{name}")
    st.subheader(IMAGES_HEADING)
    st.caption(IMAGES_NOTE)
    for n, (_, row) in enumerate(results.top.iterrows(), start=1):
        left, right = st.columns([1, 2])
        left.image(enlarged(row["png"]), caption=model_labels(results, row), output_format="PNG", width=192)  # already scaled by whole pixels
        right.plotly_chart(made[f"top-{n}"], key=f"results-top-{n}")


@st.fragment(run_every=30)
def live_results(slug: str) -> None:
    db = open_db(create=False)
    try:
        show_results(db, get_study(db, slug))
    finally:
        db.close()


def results_tab(db, study) -> None:
    if st.session_state.get("live", True):  # the Progress tab's live switch
        live_results(study.slug)
    else:
        show_results(db, study)
    if st.button("Prepare the report (one HTML file)", key="prepare-report"):
        results = compute_results(db, study, cifar10h=cifar10h_or_none(), n_boot=1000)
        st.download_button("Download report.html", report_html(results), f"{study.slug}-report.html", "text/html",
                           key="dl-report")


def run_page(db) -> None:
    studies = list_studies(db)
    tab_studies, tab_results, tab_participants, tab_create, tab_export = st.tabs(
        ["Progress", "Results", "Participants", "Create", "Export"])
    with tab_create:
        with st.expander("Plan the study's size first"):
            plan_form()
        create_tab(db)
    if not studies:
        with tab_studies:
            st.info("No study yet: create one in the Create tab (or with `python -m study create`).")
        return
    slugs = [s.slug for s in studies]
    slug = st.sidebar.selectbox("Study", slugs, index=len(slugs) - 1, key="admin-study")
    study = next(s for s in studies if s.slug == slug)
    with tab_studies:
        studies_tab(db, study)
    with tab_results:
        results_tab(db, study)
    with tab_participants:
        participants_tab(db, study)
    with tab_export:
        export_tab(db, study)


ensure_app()  # a fresh server's first request for this page goes through app.py (and its lab password) too
st.title("Human study: organiser")
try:
    expected_password = configured_password(st.secrets)
except AdminNotConfigured as e:
    st.error(f"Organiser page disabled: {e}.")
    st.stop()
try:
    db = open_db()
except StudyDBError as e:
    st.error(f"Database problem: {e}")
    st.stop()
try:
    if sign_in(db, expected_password):
        run_page(db)
finally:
    db.close()
