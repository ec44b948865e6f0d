"""Noise curves: accuracy under clipped Gaussian noise (the paper's Figure 3) for several models, with 95%
intervals, and what the noisy images look like."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from randmask.views import catalog, protocol_views

_ui.ensure_app()
st.title("Noise curves")
st.caption("Each pixel gets N(0, σ²) noise clipped to [−2σ, 2σ] (σ in 0–255 pixel units, so σ = 8 means 8/255), "
           "the image is clipped to [0, 1] and rounded to 8 bits; every model sees the same noisy images.")
dataset = _ui.current_dataset()
entries = _ui.catalog().for_dataset(dataset)
by_key = catalog.keyed(entries)
default = _ui.picked_keys()
keys = st.multiselect("Models", list(by_key), default=default, key="noise_models",
                      format_func=lambda k: by_key[k].label)
chosen = catalog.select(entries, keys)
_ui.untrained_note(chosen)
x, y = _ui.images(dataset)

c1, c2, c3 = st.columns([3, 2, 1])
with c1:
    low, high = st.slider("σ range (/255)", 0, 64, (0, 32), key="noise_range")
with c2:
    n = int(st.number_input("Test images", 20, len(x), min(200, len(x)), step=20, key="noise_n"))
with c3:
    seed = int(st.number_input("Noise seed", 0, 10_000, 0, key="noise_seed"))
sigmas = protocol_views.sigma_levels(low, high)
st.caption(protocol_views.levels_caption(sigmas))

st.subheader("What the noise looks like")
index = st.slider("Image", 0, len(x) - 1, 3, key="noise_image")
shown = protocol_views.noisy_versions(x[index:index + 1], protocol_views.shown_levels(sigmas), seed)
for col, (caption, noisy) in zip(st.columns(len(shown)), shown, strict=True):
    with col:
        _ui.show_image(noisy, caption, size=160)

st.subheader("Accuracy against σ")
if st.button("Compute the curves", type="primary", key="noise_run", disabled=not chosen):
    with _ui.readable_errors("Computing the curves failed"):
        report, bar = _ui.progress_callback("Classifying noisy images…")
        models = _ui.named_models(chosen)
        rows = protocol_views.noise_curves(models, x, y, sigmas, n=n, seed=seed, dataset=dataset, progress=report)
        bar.empty()
        st.session_state["noise_result"] = {"rows": rows, "n": n}

result = st.session_state.get("noise_result")
if not result:
    st.info("Choose models and a σ range, then compute the curves (a few seconds per model on a CPU).")
else:
    rows = result["rows"]
    fig = go.Figure()
    for curve in protocol_views.curve_series(rows):
        fig.add_scatter(x=curve["x"], y=curve["y"], mode="lines+markers", name=curve["name"],
                        error_y={"type": "data", "symmetric": False, "array": curve["plus"],
                                 "arrayminus": curve["minus"]},
                        hovertemplate="σ %{x}/255: %{y:.1f}%<extra>" + curve["name"] + "</extra>")
    fig.update_layout(height=420, title=f"Accuracy under Gaussian noise ({result['n']} test images, 95% intervals)",
                      margin={"t": 40})
    fig.update_xaxes(title="noise σ (/255)")
    fig.update_yaxes(title="accuracy (%)", range=[0, 100])
    st.plotly_chart(fig, key="noise_chart")
    with st.expander("Numbers"):
        st.dataframe(protocol_views.noise_table(rows), hide_index=True,
                     column_config={"accuracy (%)": st.column_config.NumberColumn(format="%.1f")})
        st.download_button("Download CSV", catalog.rows_csv(rows), "noise.csv", "text/csv", key="noise_csv")
