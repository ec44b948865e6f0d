"""Home: Random Mask in one picture and three sentences, the zoo with clean accuracies, where to start."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # a page run on its own (tests) still finds the project
    sys.path.insert(0, ROOT)
from pages import _ui  # noqa: E402
from randmask import catalog, images, mask_views, settings  # noqa: E402
from randmask.zoo import list_zoo  # noqa: E402

_ui.ensure_app()
st.title("Random Mask, hands on")
st.markdown(
    "A Random-Mask network fixes, once and before training, a random binary mask on the outputs of the first "
    "convolutional layers of a ResNet-18: in every channel a set share of positions (the *drop ratio*) is "
    "zeroed for good, and each channel gets its own pattern.  \n"
    "The masks never change, in training or at test time, so the network must recognise objects from "
    "scattered, incomplete local evidence.  \n"
    "The paper reports that such networks resist adversarial images transferred from other networks far better "
    "than a normal ResNet-18, and that the images which do fool them often look like the wrong class to people "
    "as well; this app lets you look at all of it."
)

with _ui.readable_errors("Cannot draw the picture"):
    x, y = _ui.images("cifar10", 8)
    image = x[0]
    ratio = 0.7
    stem = mask_views.kind_comparison((16, 32, 32), ratio, seed=0)
    st.subheader(f"What the first layer passes on, drop ratio {ratio:g}")
    columns = st.columns(6)
    with columns[0]:
        _ui.show_image(image, f"input ({_ui.class_name('cifar10', int(y[0]))})", size=160)
    for i, col in enumerate(columns[1:4]):
        with col:
            _ui.show_array(images.upscale_nearest(images.overlay_keep(image, stem["random"][i]), 5),
                           caption=f"Random Mask, channel {i + 1}")
    with columns[4]:
        _ui.show_array(images.upscale_nearest(images.overlay_keep(image, stem["SM"][0]), 5),
                       caption="SM: one pattern, every channel")
    with columns[5]:
        dead = int((~stem["DC"].flatten(1).any(1)).sum())
        _ui.show_array(images.upscale_nearest(images.overlay_keep(image, stem["DC"].any(0)), 5),
                       caption=f"DC: {dead} of 16 channels dropped whole, the rest see everything")
    st.caption("Dark positions are where a channel's output is zeroed. Random Mask gives every channel its own "
               "holes, so together the channels still see the whole image; SM repeats one pattern; DC drops "
               "whole channels.")

st.subheader("The model zoo")
with _ui.readable_errors("Cannot list the zoo"):
    rows = catalog.zoo_overview(list_zoo(settings.zoo_root()), _ui.catalog().entries)
    if all(r["status"] == "not trained yet" for r in rows):
        st.info("No model is trained yet (the quick zoo trains in the background and lands in assets/zoo). "
                "Until then the pages fall back to untrained models, clearly marked UNTRAINED.")
    st.dataframe(rows, hide_index=True, height="content", column_config={
        "model": st.column_config.TextColumn(width=_ui.text_width(r["model"] for r in rows)),
        "status": st.column_config.TextColumn(width=_ui.text_width(r["status"] for r in rows),
                                              help="'older recipe': trained before the zoo's current plan; "
                                                   "`python -m randmask zoo train` retrains it. 'yours': trained "
                                                   "on the Train page, in that folder"),
        "accuracy (%)": st.column_config.TextColumn(alignment="right", help="Clean test accuracy on the full "
                                                                           "test set, as shipped"),
        "used for": st.column_config.TextColumn(width=_ui.text_width(r["used for"] for r in rows))})
    st.caption(f"{sum(r['status'] != 'not trained yet' for r in rows)} trained models over all data sets; the "
               "README's zoo table lists the shipped ones with their recipes and training times.")

st.subheader("Where to start")
_ui.link("masks", "Mask patterns: see the masks, layer by layer, and what one filter can still see")
_ui.link("shuffle", "Patch shuffle: cut an image into k×k patches, shuffle, and watch the predictions")
_ui.link("noise", "Noise curves: accuracy under Gaussian noise, with intervals")
_ui.link("gallery", "Adversarial gallery: images made against a normal and a masked network, side by side")
_ui.link("robustness", "Robustness explorer: our reproduction beside the paper's tables and Figure 7")
_ui.link("train", "Train: train a model of any notation in the background")
