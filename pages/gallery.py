"""Adversarial gallery: the same images attacked against a normal and against a masked network, side by side
with the amplified perturbations (diverging colours centred on 0) and both networks' labels and confidences."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import streamlit as st

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # a page run on its own (tests) still finds the project
    sys.path.insert(0, ROOT)
from pages import _ui  # noqa: E402
from randmask import catalog, images  # noqa: E402
from randmask.evaluate import select_correct  # noqa: E402
from randmask.gallery import ATTACK_KINDS, attack_notation, build_gallery, gallery_png  # noqa: E402

_ui.ensure_app()
st.title("Adversarial gallery")
dataset = _ui.current_dataset()
entries = _ui.catalog().for_dataset(dataset)
picked = _ui.picked()
normals = [e for e in entries if not e.is_masked]
maskeds = [e for e in entries if e.is_masked]
explore_defaults = catalog.default_picks(entries, limit=4)


def first(candidates, notation):
    for key in [e.key for e in picked] + explore_defaults:
        entry = next((e for e in candidates if e.key == key), None)
        if entry and (notation is None or entry.notation == notation):
            return entry.key
    return next((e.key for e in candidates if e.notation == notation), None)


c1, c2 = st.columns(2)
with c1:
    normal = _ui.entry_select("Normal network", normals, first(normals, "Normal ResNet-18"), key="gallery_normal")
with c2:
    masked = _ui.entry_select("Masked network (source)", maskeds, first(maskeds, "0.9-Shallow"), key="gallery_masked")
if normal is None or masked is None:
    st.stop()
_ui.untrained_note([normal, masked])

a1, a2, a3, a4 = st.columns([2, 2, 1, 1])
with a1:
    kind = st.segmented_control("Attack", list(ATTACK_KINDS), default="PGD", key="gallery_attack") or "PGD"
with a2:
    if kind == "CW":
        kappa = st.slider("confidence κ (logits)", 0, 60, 40, key="gallery_kappa")
        eps = 16
    else:
        eps = st.slider("ε (/255)", 1, 32, 16, key="gallery_eps")
        kappa = 40
with a3:
    count = int(st.number_input("Images", 1, 8, 4, key="gallery_n"))
with a4:
    start = int(st.number_input("From image", 0, 990, 0, key="gallery_start"))
budget = {}
if kind == "CW":
    b1, b2, _ = st.columns([1, 1, 2])
    budget["cw_search"] = int(b1.number_input("binary-search rounds for c", 1, 30, 5, key="gallery_cw_search"))
    budget["cw_steps"] = int(b2.number_input("optimisation steps per round", 10, 1000, 50, step=10,
                                             key="gallery_cw_steps"))
elif kind == "Square":
    b1, _ = st.columns([1, 3])
    budget["queries"] = int(b1.number_input("queries per image", 50, 10_000, 300, step=50, key="gallery_queries"))
both_trained = normal.trained and masked.trained
only_correct = st.checkbox("Only images both networks classify correctly", value=both_trained, key="gallery_correct")
attack = attack_notation(kind, eps, kappa=kappa, **budget)
st.caption(f"Attack in the paper's notation: **{attack}**"
           + (" (step 1, the paper's step rule)" if kind == "PGD" else "")
           + (" (a small budget so a CPU answers in seconds; raise it for stronger attacks)"
              if kind in ("CW", "Square") else ""))

if st.button("Build the gallery", type="primary", key="gallery_run"):
    with _ui.readable_errors("The gallery could not be built"):
        x, y = _ui.images(dataset)
        models = _ui.named_models([normal, masked])
        names = tuple(models)
        if only_correct:
            chosen = select_correct(list(models.values()), x[start:], y[start:], n=count) + start
            if len(chosen) == 0:
                raise ValueError("no image from there on is classified correctly by both networks; untick the box")
        else:
            chosen = np.arange(start, min(start + count, len(x)))
        report, bar = _ui.progress_callback(f"Attacking with {attack}…")
        gallery = build_gallery(models[names[0]], models[names[1]], attack, x[chosen], y[chosen],
                                        names=names, indices=[int(i) for i in chosen], dataset=dataset,
                                        progress=report)
        bar.empty()
        st.session_state["gallery"] = gallery

gallery = st.session_state.get("gallery")
if gallery is None:
    st.info("Pick two networks and an attack, then build the gallery.")
    st.stop()

vmax = gallery.perturbation_scale()
st.markdown(f"**{gallery.attack}** against **{gallery.names[0]}** and against **{gallery.names[1]}**. "
            "Under every image: each network's label and confidence.")
legend = images.diverging_rgb(np.tile(np.linspace(-vmax, vmax, 256), (14, 1)), vmax)
_ui.show_array(legend, f"perturbation colours (mean over RGB): −{vmax:g}/255 blue · 0 white · +{vmax:g}/255 red")
titles = ["original", f"adversarial vs {gallery.names[0]}", f"adversarial vs {gallery.names[1]}",
          f"perturbation vs {gallery.names[0]}", f"perturbation vs {gallery.names[1]}"]
header = st.columns(5)
for col, title in zip(header, titles, strict=True):
    col.markdown(f"**{title}**")
for i, index in enumerate(gallery.indices):
    cols = st.columns(5)
    for col, column in zip(cols[:3], gallery.column_keys(), strict=True):
        with col:
            image = gallery.clean[i] if column == "clean" else gallery.adv[column][i]
            _ui.show_image(image, size=160)
            lines = gallery.caption(column, i).split(" · ")
            if column == "clean":
                lines.insert(0, f"#{index}, true: {_ui.class_name(dataset, int(gallery.labels[i]))}")
            st.caption("  \n".join(lines))
    for col, name in zip(cols[3:], gallery.names, strict=True):
        with col:
            rgb, _ = images.perturbation_image(gallery.adv[name][i], gallery.clean[i], vmax)
            tile = images.upscale_nearest(rgb, 5)
            _ui.show_array(tile)
            st.caption(f"l-inf {float(gallery.linf[name][i]):.0f}/255")

st.download_button("Download the gallery as PNG", gallery_png(gallery), "gallery.png", "image/png",
                   key="gallery_png")
