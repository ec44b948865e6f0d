"""Home: Random Mask in one picture and three sentences, the zoo with clean accuracies, where to start."""
from __future__ import annotations

import streamlit as st

from pages import _ui
from randmask.views import catalog, mask_views

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
    ratio = 0.7
    st.subheader(f"What the first layer passes on, drop ratio {ratio:g}")
    columns = st.columns(6)
    with columns[0]:
        _ui.show_image(x[0], f"input ({_ui.class_name('cifar10', int(y[0]))})", size=160)
    for col, (tile, caption) in zip(columns[1:], mask_views.stem_tiles(x[0], ratio, seed=0), strict=True):
        with col:
            _ui.show_array(tile, caption=caption)
    st.caption("Dark positions are where a channel's output is zeroed. Random Mask gives every channel its own "
               "holes, so together the channels still see the whole image; SM repeats one pattern; DC drops "
               "whole channels.")

st.subheader("The model zoo")
with _ui.readable_errors("Cannot list the zoo"):
    rows = catalog.zoo_overview(_ui.zoo_rows(), _ui.catalog().entries)
    trained = catalog.zoo_trained_count(rows)
    if not trained:
        st.info("No model is trained yet (the quick zoo trains in the background and lands in assets/zoo). "
                "Until then the pages fall back to untrained models, clearly marked UNTRAINED.")
    for dataset in dict.fromkeys(r["data set"] for r in rows):  # one table a data set: no column repeating it
        mine = [{k: v for k, v in r.items() if k != "data set"} for r in rows if r["data set"] == dataset]
        st.markdown(f"**{dataset}** · {len(mine)} models")
        st.table(mine, hide_index=True)  # static: long names and roles wrap instead of running off the page
    st.caption("'accuracy (%)': clean test accuracy on the full test set, as shipped. 'older recipe': trained "
               "before the zoo's current plan (`python -m randmask zoo train` retrains it); 'yours': trained on "
               "the Train page, in that folder.")
    st.caption(f"{trained} trained models over all data sets; the "
               "README's zoo table lists the shipped ones with their recipes and training times.")

st.subheader("Where to start")
_ui.link("masks", "Mask patterns: see the masks, layer by layer, and what one filter can still see")
_ui.link("shuffle", "Patch shuffle: cut an image into k×k patches, shuffle, and watch the predictions")
_ui.link("noise", "Noise curves: accuracy under Gaussian noise, with intervals")
_ui.link("gallery", "Adversarial gallery: images made against a normal and a masked network, side by side")
_ui.link("robustness", "Robustness explorer: our reproduction beside the paper's tables and Figure 7")
_ui.link("train", "Train: train a model of any notation in the background")
