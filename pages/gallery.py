"""Adversarial gallery: the same images attacked against a normal and against a masked network, side by side
with the amplified perturbations (diverging colours centred on 0) and both networks' labels and confidences."""
from __future__ import annotations

import streamlit as st

from pages import _ui
from randmask.views import catalog, gallery
from randmask.views.gallery import ATTACK_KINDS, attack_notation

_ui.ensure_app()
st.title("Adversarial gallery")
dataset = _ui.current_dataset()
entries = _ui.catalog().for_dataset(dataset)
normals, maskeds = catalog.split_masked(entries)
normal_key, masked_key = catalog.gallery_pair(entries, _ui.picked_keys())

c1, c2 = st.columns(2)
with c1:
    normal = _ui.entry_select("Normal network", normals, normal_key, key="gallery_normal")
with c2:
    masked = _ui.entry_select("Masked network (source)", maskeds, masked_key, key="gallery_masked")
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
        chosen = gallery.choose_images(list(models.values()), x, y, start, count, only_correct)
        report, bar = _ui.progress_callback(f"Attacking with {attack}…")
        built = gallery.gallery_for(models, attack, x, y, chosen, dataset=dataset, progress=report)
        bar.empty()
        st.session_state["gallery"] = built

built = st.session_state.get("gallery")
if built is None:
    st.info("Pick two networks and an attack, then build the gallery.")
    st.stop()

for note in built.unchanged_notes():  # a blank perturbation tile must never pass for a result
    st.warning(note, icon=":material/warning:")
vmax = built.perturbation_scale()
st.markdown(f"**{built.attack}** against **{built.names[0]}** and against **{built.names[1]}**. "
            "Under every image: each network's label and confidence.")
_ui.show_array(gallery.perturbation_legend(vmax),
               f"perturbation colours (mean over RGB): −{vmax:g}/255 blue · 0 white · +{vmax:g}/255 red")
for col, title in zip(st.columns(5), gallery.column_titles(built), strict=True):
    col.markdown(f"**{title}**")
for row in gallery.display_rows(built):
    cols = st.columns(5)
    for col, (image, caption) in zip(cols[:3], row["images"], strict=True):
        with col:
            _ui.show_image(image, size=160)
            st.caption(caption)
    for col, (tile, caption) in zip(cols[3:], row["perturbations"], strict=True):
        with col:
            _ui.show_array(tile)
            st.caption(caption)

st.download_button("Download the gallery as PNG", gallery.gallery_png(built), "gallery.png", "image/png",
                   key="gallery_png")
