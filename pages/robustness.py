"""Robustness explorer: the paper's tables with our reproduction beside them (from results/*.csv), the
Figure-7 trade-off between clean accuracy and defense rate, and a small new transfer evaluation run here."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from randmask.attacks import canonical_attack
from randmask.core import settings
from randmask.results import comparison
from randmask.results.paper import (
    PAPER_TABLES,
    load_paper_tables,
    load_results,
    paper_attacks,
    paper_sources,
    table_dataset,
    trained_model_keys,
)
from randmask.views import catalog, robustness_view, tables

ERROR_BAR = {"color": "rgba(31, 119, 180, 0.45)", "thickness": 1.5, "width": 3}

_ui.ensure_app()
st.title("Robustness explorer")
paper = None
with _ui.readable_errors("The paper's tables are missing"):
    paper = load_paper_tables()
ours, problems = load_results()
for problem in problems:
    st.caption(f"⚠ results/{problem}")
if ours.empty:
    st.info(f"No reproduction results in {settings.results_root()} yet: the tables show the paper's numbers only. "
            "Our numbers appear beside them once the reproduction has written its CSVs there.")

tab_tables, tab_tradeoff, tab_run = st.tabs(["Tables: ours beside the paper's", "Figure 7: trade-off",
                                             "Run a transfer evaluation"])

with tab_tables:
    if paper is not None:
        table = st.selectbox("Table", list(PAPER_TABLES), format_func=PAPER_TABLES.get,
                             index=list(PAPER_TABLES).index(7), key="robust_table")
        with _ui.readable_errors("Cannot compare"):
            trained = trained_model_keys(_ui.catalog().trained_refs(table_dataset(table)))
            comp = comparison.compare_with_paper(paper, ours, table, trained)
            wide = tables.comparison_table(comp)
            have_ours = robustness_view.has_ours(comp)
            metric = robustness_view.metric_names(comp)
            groups = tables.comparison_groups(wide)
            chosen = st.multiselect(
                "Columns", groups, default=tables.groups_that_fit(wide, _ui.TABLE_WIDTH_PX),
                key=f"robust_columns_{table}",
                help="Clean accuracy and the attacks we measured come first, the paper's own columns last; the "
                     "default is what fits beside the target names.") or groups[:1]
            hidden = [g for g in groups if g not in chosen]
            st.caption(f"Percent ({metric}). Defense rate = the target's accuracy on adversarial images that fool "
                       "the source. 'paper' = the paper's number, 'ours' = our reproduction where results/ has the "
                       f"same source, target, attack and metric; {tables.MISSING} = no number. Here: "
                       + tables.status_caption(wide)
                       + ("" if have_ours else " No matching rows of ours yet.")
                       + (f" Not shown (add them above): {', '.join(hidden)}." if hidden else ""))
            visible = wide[["target", *tables.group_columns(wide, chosen)]]
            st.dataframe(visible, hide_index=True, height="content", column_config={
                c: st.column_config.TextColumn(alignment="right", width=tables.column_width(visible[c], c, **tables.TIGHT))
                for c in visible.columns[1:]} | {
                "target": st.column_config.TextColumn(
                    width=tables.column_width(visible["target"], "target", **tables.TIGHT), pinned=True)})
            missing = comparison.untrained_targets(comp)
            if missing:
                with st.expander(f"Not trained here: {len(missing)} of this table's models. The commands that "
                                 "train them"):
                    st.caption("A model trained this way appears in the sidebar's picker, and the *Run a transfer "
                               "evaluation* tab measures it.")
                    st.code(robustness_view.train_commands(missing), language="bash")
            attacks, opening = robustness_view.chart_columns(comp)
            shown = st.selectbox("Chart column", attacks, key="robust_chart_attack", index=opening)
            bars = robustness_view.chart_bars(comp, shown)
            fig = go.Figure()
            fig.add_bar(name="paper", x=bars["target"], y=bars["paper"], marker_color="#c0392b")
            if bars["ours"] is not None:
                fig.add_bar(name="ours", x=bars["target"], y=bars["ours"], marker_color="#2c7fb8",
                            error_y={"type": "data", "symmetric": False, "array": bars["plus"],
                                     "arrayminus": bars["minus"]})
            fig.update_layout(barmode="group", height=440, margin={"t": 40},
                              title=f"{PAPER_TABLES[table]}: {shown}")
            fig.update_xaxes(title="target network")
            fig.update_yaxes(title="percent", range=[0, 100])
            st.plotly_chart(fig, key="robust_chart")
            with st.expander("Every number, with our 95% intervals"):
                _ui.fitted_table(tables.details_for_page(comp), f"robust_details_all_{table}",
                                 fold=["source", "results file"], budget=_ui.TABLE_WIDTH_PX - 40, tight=True,
                                 right=["paper %", "ours %", "ours 95% CI", "n", "ours − paper"])
                st.caption("The commands that train a model 'not trained here' are in the list above.")

with tab_tradeoff:
    if paper is not None:
        sources = paper_sources(paper)
        c1, c2 = st.columns(2)
        with c1:
            source = st.selectbox("Source network", sources, key="tradeoff_source")
        with c2:
            attacks = paper_attacks(paper, source)
            attack = st.selectbox("Attack", attacks, index=robustness_view.option_index(attacks, "FGSM16"),
                                  key="tradeoff_attack")
        series = robustness_view.tradeoff_series(comparison.tradeoff_points(paper, ours, source, attack))
        fig = go.Figure()
        mine = series["paper"]
        fig.add_scatter(x=mine["x"], y=mine["y"], mode="markers+text", name="paper",
                        marker={"symbol": "star", "size": 14, "color": "#d62728"},
                        text=mine["text"], textposition=mine["position"],
                        hovertemplate="%{text}: clean %{x:.1f}%, defense %{y:.1f}%<extra>paper</extra>")
        mine = series["ours"]
        if mine is not None:
            fig.add_scatter(x=mine["x"], y=mine["y"], mode="markers+text", name="ours",
                            marker={"size": 10, "color": "#1f77b4"}, text=mine["text"],
                            # labels beside the point, off the cross its error bars draw through it
                            textposition=mine["position"], textfont={"color": "#1f77b4"},
                            error_x={"type": "data", "symmetric": False, **ERROR_BAR,
                                     "array": mine["x_plus"], "arrayminus": mine["x_minus"]},
                            error_y={"type": "data", "symmetric": False, **ERROR_BAR,
                                     "array": mine["y_plus"], "arrayminus": mine["y_minus"]},
                            hovertemplate="%{text}: clean %{x:.1f}%, defense %{y:.1f}%<extra>ours</extra>")
        fig.update_layout(height=480, margin={"t": 40},
                          title=f"Drop ratio trade-off, {attack} from {source} (label = drop ratio, 0 = Normal)")
        fig.update_xaxes(title="clean test accuracy (%)")
        fig.update_yaxes(title="defense rate (%)")
        st.plotly_chart(fig, key="tradeoff_chart")
        if mine is None:
            st.caption("Only the paper's points: our transfer results for this source and attack are not in "
                       "results/ yet.")

with tab_run:
    dataset = _ui.current_dataset()
    entries = _ui.catalog().for_dataset(dataset)
    by_key = catalog.keyed(entries)
    default_source, default_targets = catalog.default_transfer(entries, _ui.picked_keys())
    c1, c2 = st.columns(2)
    with c1:
        normals = catalog.split_masked(entries)[0]
        src = _ui.entry_select("Source (attacked) network", normals or entries, default_source, key="run_source",
                               help="The network the attack is crafted against; its adversarial images are then "
                                    "shown to the targets (black-box transfer).")
    with c2:
        attack_text = st.text_input("Attack (paper notation)", "FGSM16", key="run_attack",
                                    help="e.g. FGSM8, FGSM16, PGD16, PGD2,16, CW40(search=5, steps=50)")
    targets = st.multiselect("Target networks", list(by_key), default=default_targets, key="run_targets",
                             format_func=lambda k: by_key[k].label)
    if src is not None and src.key in targets:
        st.caption(f"{src.name} is also a target: on images chosen because they fool it, its defense rate is 0 by "
                   "construction.")
    with st.columns([1, 2])[0]:
        n = int(st.number_input("Images to attack", 10, 1000, 50, step=10, key="run_n",
                                help="The first test images the source classifies correctly"))
    if st.button("Run", type="primary", key="run_go", disabled=src is None or not targets):
        with _ui.readable_errors("The transfer evaluation failed"):
            attack_text = canonical_attack(attack_text)
            x, y = _ui.images(dataset)
            chosen = catalog.transfer_entries(src, targets, entries)  # the source may be a target too
            models = _ui.named_models(chosen)
            report, bar = _ui.progress_callback(f"Attacking {next(iter(models))} with {attack_text}…")
            rows = robustness_view.run_transfer(models, chosen, targets, attack_text, x, y, n=n, dataset=dataset,
                                                progress=report, stage=report.stage)
            bar.empty()
            st.session_state["run_result"] = rows
    rows = st.session_state.get("run_result")
    if rows:
        summary = robustness_view.transfer_summary(rows)
        if summary:
            st.markdown(summary)
        st.dataframe(tables.transfer_table(rows), hide_index=True, column_config={
            c: st.column_config.TextColumn(alignment="right")
            for c in ("defense rate (%)", "95% CI (%)", "n", "clean accuracy (%)")})
        st.download_button("Download CSV", catalog.rows_csv(rows), "transfer.csv", "text/csv", key="run_csv")
