"""Noise curves: accuracy under clipped Gaussian noise (the paper's Figure 3) for several models, with 95%
intervals, and what the noisy images look like."""
from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
import torch

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # a page run on its own (tests) still finds the project
    sys.path.insert(0, ROOT)
from pages import _ui  # noqa: E402
from randmask import catalog  # noqa: E402
from randmask.evaluate import quantize  # noqa: E402
from randmask.protocols import PAPER_SIGMAS, gaussian_noise, noise  # noqa: E402

_ui.ensure_app()
st.title("Noise curves")
st.caption("Each pixel gets N(0, σ²) noise clipped to [−2σ, 2σ] (σ in 0–255 pixel units, so σ = 8 means 8/255), "
           "the image is clipped to [0, 1] and rounded to 8 bits; every model sees the same noisy images.")
dataset = _ui.current_dataset()
entries = _ui.catalog().for_dataset(dataset)
by_key = {e.key: e for e in entries}
default = [e.key for e in _ui.picked()]
keys = st.multiselect("Models", list(by_key), default=default, key="noise_models",
                      format_func=lambda k: by_key[k].label)
chosen = [by_key[k] for k in keys]
_ui.untrained_note(chosen)
x, y = _ui.images(dataset)

c1, c2, c3 = st.columns([3, 2, 1])
with c1:
    low, high = st.slider("σ range (/255)", 0, 64, (0, 32), key="noise_range")
with c2:
    n = int(st.number_input("Test images", 20, len(x), min(200, len(x)), step=20, key="noise_n"))
with c3:
    seed = int(st.number_input("Noise seed", 0, 10_000, 0, key="noise_seed"))
paper_levels = [s for s in (0, *PAPER_SIGMAS) if low <= s <= high]
extra = [s for s in (40, 48, 56, 64) if low <= s <= high and s > max(PAPER_SIGMAS)]
sigmas = sorted(set(paper_levels + extra + [low, high]))
st.caption("σ levels: " + ", ".join(f"{s:g}" for s in sigmas) + " (the paper's 1, 2, 4, 8, 12, …, 32 within the range)")

st.subheader("What the noise looks like")
index = st.slider("Image", 0, len(x) - 1, 3, key="noise_image")
shown = sigmas if len(sigmas) <= 6 else [sigmas[round(i * (len(sigmas) - 1) / 5)] for i in range(6)]
cols = st.columns(len(shown))
for col, sigma in zip(cols, shown, strict=True):
    noisy = quantize(gaussian_noise(x[index:index + 1], float(sigma), torch.Generator().manual_seed(seed)),
                     x[index:index + 1])
    with col:
        _ui.show_image(noisy[0], f"σ = {sigma:g}/255", size=160)

st.subheader("Accuracy against σ")
if st.button("Compute the curves", type="primary", key="noise_run", disabled=not chosen):
    with _ui.readable_errors("Computing the curves failed"):
        report, bar = _ui.progress_callback("Classifying noisy images…")
        models = _ui.named_models(chosen)
        rows = noise(models, x[:n], y[:n], sigmas=[s for s in sigmas if s > 0], seed=seed, dataset=dataset,
                     progress=report)
        bar.empty()
        st.session_state["noise_result"] = {"rows": rows, "n": n}

result = st.session_state.get("noise_result")
if not result:
    st.info("Choose models and a σ range, then compute the curves (a few seconds per model on a CPU).")
else:
    rows = result["rows"]
    fig = go.Figure()
    for name in dict.fromkeys(r["target"] for r in rows):
        mine = sorted((r for r in rows if r["target"] == name), key=lambda r: r["sigma"])
        fig.add_scatter(x=[r["sigma"] for r in mine], y=[100 * r["accuracy"] for r in mine], mode="lines+markers",
                        name=name, error_y={"type": "data", "symmetric": False,
                                            "array": [100 * (r["ci_high"] - r["accuracy"]) for r in mine],
                                            "arrayminus": [100 * (r["accuracy"] - r["ci_low"]) for r in mine]},
                        hovertemplate="σ %{x}/255: %{y:.1f}%<extra>" + name + "</extra>")
    fig.update_layout(height=420, title=f"Accuracy under Gaussian noise ({result['n']} test images, 95% intervals)",
                      margin={"t": 40})
    fig.update_xaxes(title="noise σ (/255)")
    fig.update_yaxes(title="accuracy (%)", range=[0, 100])
    st.plotly_chart(fig, key="noise_chart")
    with st.expander("Numbers"):
        st.dataframe([{"model": r["target"], "σ (/255)": r["sigma"], "accuracy (%)": 100 * r["accuracy"],
                       "95% CI (%)": f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f}", "n": r["n"]}
                      for r in rows], hide_index=True,
                     column_config={"accuracy (%)": st.column_config.NumberColumn(format="%.1f")})
        st.download_button("Download CSV", catalog.rows_csv(rows), "noise.csv", "text/csv", key="noise_csv")
