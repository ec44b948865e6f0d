"""Patch shuffle: cut an image into k×k patches, shuffle them, and compare each model's prediction; then a batch
run over many images, the paper's Table 3 protocol at small n (images all models know with high confidence)."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from randmask.results import paper
from randmask.results.plan import PRESETS
from randmask.views import catalog, protocol_views, tables

# the paper keeps images its nets know with confidence >= 0.99; the reproduction's quick preset says why ours can't
PAPER_CONFIDENCE, OUR_CONFIDENCE = PRESETS["paper"]["shuffle_confidence"], PRESETS["quick"]["shuffle_confidence"]

_ui.ensure_app()
st.title("Patch shuffle")
dataset = _ui.current_dataset()
entries = _ui.picked()
if not entries:
    st.warning("Pick at least one model in the sidebar.")
    st.stop()
_ui.untrained_note(entries)
x, y = _ui.images(dataset)
grids = catalog.shuffle_grids(x.shape[-1])
default_k, default_ks = protocol_views.grid_defaults(grids)

c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    index = int(st.number_input(f"Test image (0–{len(x) - 1})", 0, len(x) - 1, 0, key="shuffle_index"))
with c2:
    k = st.segmented_control("Grid (k×k patches)", grids, default=default_k, key="shuffle_k",
                             format_func=lambda g: f"{g}×{g}") or grids[0]
with c3:
    seed = int(st.number_input("Shuffle seed", 0, 10_000, 0, key="shuffle_seed"))

with _ui.readable_errors("Cannot shuffle"):
    image, shuffled = protocol_views.shuffled_pair(x, index, k, seed)
    left, right, table = st.columns([1, 1, 2], gap="medium")
    with left:
        _ui.show_image(image[0], f"original: {_ui.class_name(dataset, int(y[index]))}", size=192)
    with right:
        _ui.show_image(shuffled[0], f"{k}×{k} patches shuffled", size=192)
    with table:
        view = protocol_views.shuffle_predictions(_ui.named_models(entries), image, shuffled, k, dataset)
        st.markdown(f"**Predictions** (true class: {_ui.class_name(dataset, int(y[index]))})")
        st.dataframe(view, hide_index=True)

st.divider()
st.subheader("Batch run: Table 3 at small n")
st.caption("From the first test images, keep those every picked model classifies correctly with at least the "
           "given confidence, shuffle each with a seeded k×k grid, and measure each model's accuracy (95% Wilson "
           "intervals). The paper ran this on 5000 ImageNet images; here it is CIFAR-10 scale.")
b1, b2, b3 = st.columns(3)
with b1:
    pool = int(st.number_input("Images to scan", 50, len(x), min(300, len(x)), step=50, key="shuffle_pool"))
with b2:
    confidence = st.slider("Minimum confidence", 0.5, 0.999, OUR_CONFIDENCE, 0.01, key="shuffle_conf",
                           format="%.2f")
st.caption(f"Default {OUR_CONFIDENCE:.2f}, not the paper's {PAPER_CONFIDENCE:.2f}: our nets train with label "
           "smoothing 0.1, which caps their softmax confidence near 0.91, so at 0.99 no image qualifies. "
           f"{OUR_CONFIDENCE:.2f} is what the reproduction uses too (REPRODUCTION.md, Table 3).")
with b3:
    ks = st.multiselect("Grids", grids, default=default_ks, key="shuffle_ks",
                        format_func=lambda g: f"{g}×{g}")

if st.button("Run the batch", type="primary", key="shuffle_run", disabled=not ks):
    with _ui.readable_errors("The batch run failed"):
        report, bar = _ui.progress_callback("Shuffling and classifying…")
        rows = protocol_views.shuffle_batch(_ui.named_models(entries), x, y, pool=pool, ks=ks,
                                            min_confidence=confidence, seed=seed, dataset=dataset, progress=report)
        bar.empty()
        st.session_state["shuffle_result"] = {"rows": rows, "pool": pool, "confidence": confidence}

result = st.session_state.get("shuffle_result")
if result:
    rows = result["rows"]
    n_kept = protocol_views.kept_images(rows)
    if n_kept == 0:
        st.warning(f"None of the first {result['pool']} images is classified correctly with confidence ≥ "
                   f"{result['confidence']:.2f} by every model. Lower the threshold or pick other models.")
    else:
        st.markdown(f"**{n_kept}** of the first {result['pool']} images qualify "
                    f"(confidence ≥ {result['confidence']:.2f} for every model).")
        fig = go.Figure()
        for bars in protocol_views.shuffle_series(rows):
            fig.add_bar(name=bars["name"], x=bars["x"], y=bars["y"],
                        error_y={"type": "data", "symmetric": False, "array": bars["plus"],
                                 "arrayminus": bars["minus"]})
        fig.update_layout(barmode="group", height=380, title="Accuracy on shuffled images", margin={"t": 40})
        fig.update_xaxes(title="grid (k×k patches)")
        fig.update_yaxes(title="accuracy (%)", range=[0, 100])
        st.plotly_chart(fig, key="shuffle_chart")
        st.dataframe(protocol_views.shuffle_table(rows), hide_index=True,
                     column_config={"accuracy (%)": st.column_config.NumberColumn(format="%.1f")})

with st.expander("The paper's Table 3 (ImageNet, 5000 images)"):
    with _ui.readable_errors("The paper's table is not available"):
        paper_rows = tables.paper_shuffle_table(paper.load_paper_tables())
        st.dataframe(paper_rows, hide_index=True, column_config={
            c: st.column_config.TextColumn(alignment="right") for c in paper_rows.columns[1:]})
        st.caption("Accuracy (%) on shuffled images the model classified correctly with confidence ≥ "
                   f"{PAPER_CONFIDENCE:.2f} before shuffling, as printed in the paper (two decimals).")
