"""Mask patterns: heatmaps of a model's masks, per-layer drop statistics, Random vs SM vs DC side by side, and
what one 3×3 filter can still see through a mask. Masks come from the notation and mask seed: no weights needed."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages import _ui
from randmask.core.notation import canonical
from randmask.views import catalog, mask_views, tables

_ui.ensure_app()
st.title("Mask patterns")
dataset = _ui.current_dataset()

top = st.columns([2, 3, 1, 1])
with top[0]:
    mode = st.radio("Show the masks of", ["a model", "a notation"], horizontal=True, key="masks_mode")
if mode == "a model":
    entries, default_key = catalog.masked_choice(_ui.catalog().for_dataset(dataset), _ui.picked())
    with top[1]:
        entry = _ui.entry_select("Model", entries, default_key, key="masks_model")
    if entry is None:
        st.stop()
    notation, width, mask_seed = entry.notation, entry.width, entry.mask_seed
else:
    with top[1]:
        notation = st.text_input("Notation", "0.7-Shallow", key="masks_notation",
                                 help="e.g. 0.7-Shallow, 0.5-ShallowSM, 0.5-ShallowDC, 0.9-B12, 0.5-Deep")
    with top[2]:
        mask_seed = int(st.number_input("Mask seed", 0, 10_000, 0, key="masks_seed"))
    with top[3]:
        width = int(st.number_input("Width", 4, 64, 16, step=4, key="masks_width", help="stem channels"))

model = None
with _ui.readable_errors("Cannot build the masks"):
    notation = canonical(notation)
    model = _ui.structure(notation, dataset, width, mask_seed)
if model is None:
    st.stop()

stats = mask_views.mask_statistics(model)
st.caption(f"**{notation}** · width {width} · mask seed {mask_seed} · {len(stats)} masked layer(s). The masks are "
           "drawn from the mask seed, so an untrained model built from the notation has exactly the trained "
           "model's masks.")

VIEWS = ["Heatmaps", "Drop statistics", "Random vs SM vs DC", "What one 3×3 filter sees"]
# one view at a time (not st.tabs, which draws every tab's charts): page switches stay fast
view = st.segmented_control("View", VIEWS, default=VIEWS[0], key="masks_view", label_visibility="collapsed") \
    or VIEWS[0]

for key in ("masks_layer", "masks_channel"):  # kept while a view without these controls is shown
    if key in st.session_state:
        st.session_state[key] = st.session_state[key]
layer, keep, channel = None, None, 0
by_name = mask_views.by_layer(stats)
if not stats:
    st.info(f"{notation} has no masked layers (a normal network). The comparison and filter views still "
            "show what masks of a chosen ratio would do.")
elif view in ("Heatmaps", "Random vs SM vs DC"):  # the views that draw one layer's channel
    labels = mask_views.layer_labels(stats)
    c1, c2 = st.columns([2, 3])
    with c1:
        layer = st.selectbox("Layer", list(labels), key="masks_layer", format_func=labels.get,
                             help="Named as in the model: body.layer1.0.mask1 = stage 1, unit 0, after its first "
                                  "conv (the Glossary says more)")
    keep = mask_views.get_mask(model, layer)
    with c2:
        channel = st.slider("Channel", 0, keep.shape[0] - 1, 0, key="masks_channel")

if view == "Heatmaps":
    if keep is None:
        st.write("No masks to show.")
    else:
        row = by_name[layer]
        left, right = st.columns(2)
        with left:
            st.plotly_chart(_ui.heatmap(mask_views.channel_map(keep, channel), f"{layer}, channel {channel}: white kept, black dropped",
                                        colorscale=_ui.KEEP_COLORS, zmin=0, zmax=1, wrap=40), key="map_channel")
        with right:
            st.plotly_chart(_ui.heatmap(mask_views.drop_frequency(keep), "share of the layer's channels dropping each "
                                        "position", colorscale="Viridis", zmin=0, zmax=1, colorbar="share", wrap=40),
                            key="map_frequency")
        st.caption(mask_views.layer_caption(row))
        _ui.show_array(mask_views.mask_montage(keep, channel, 16, columns=8, factor=3),
                       mask_views.montage_caption(keep, channel, 16))

if view == "Drop statistics":
    if not stats:
        st.write("No masked layers.")
    else:
        table, same = tables.fold_columns(pd.DataFrame(mask_views.statistics_table(stats)), ["kind", "ratio"])
        if same:
            st.caption("Every masked layer: " + "; ".join(same).replace("ratio:", "nominal drop ratio:") + ".")
        st.dataframe(table, hide_index=True, column_config={
            "measured": st.column_config.NumberColumn(format="%.4f"),
            "kept by no channel": st.column_config.NumberColumn(
                format="%.3f", help="Share of the layer's positions that no channel keeps")})
        uniform = mask_views.uniform_drop_text(stats)
        if uniform:
            st.markdown(uniform)
        else:
            bars, nominal = mask_views.drop_ratio_bars(stats)
            fig = go.Figure()
            for bar in bars:
                fig.add_bar(x=bar["x"], y=bar["y"], marker_color=bar["color"], name=bar["name"],
                            hovertemplate="%{x}: %{y:.4f}<extra>" + bar["name"] + "</extra>")
            fig.add_scatter(x=nominal["x"], y=nominal["y"], mode="markers",
                            marker={"symbol": "line-ew-open", "size": 18, "color": "red", "line": {"width": 2}},
                            name="nominal ratio")
            fig.update_layout(title="Measured drop ratio per masked layer (bars) and the nominal ratio (red)",
                              height=380, margin={"t": 40}, legend={"title": {"text": "masked in"}})
            fig.update_xaxes(title="masked layer (in forward order)")
            fig.update_yaxes(title="share of neurons dropped", range=[0, 1])
            st.plotly_chart(fig, key="stats_bar")
        st.caption("Random Mask drops exactly round(ratio·H·W) positions in every channel. 'Kept by no "
                   "channel' (a share of the positions) is about ratio^C for independent per-channel masks and "
                   "the ratio itself for SM, whose channels all share one pattern.")

if view == "Random vs SM vs DC":
    shape, default_ratio = mask_views.kind_defaults(keep, by_name[layer] if layer else None, width)
    c1, c2 = st.columns(2)
    with c1:
        ratio = st.slider("Drop ratio", 0.05, 0.95, default_ratio, 0.05, key="kinds_ratio")
    with c2:
        seed = int(st.number_input("Seed", 0, 10_000, 0, key="kinds_seed"))
    ch, panels = mask_views.kind_panels(shape, ratio, seed, channel)
    for col, panel in zip(st.columns(3), panels, strict=True):
        with col:
            st.markdown(f"**{panel['title']}**")
            st.plotly_chart(_ui.heatmap(panel["channel"], f"channel {ch}: white kept, black dropped",
                                        colorscale=_ui.KEEP_COLORS, zmin=0, zmax=1, height=280, wrap=30),
                            key=f"kind_{panel['kind']}_channel")
            # a colour bar on each: DC's map is one flat colour, which means nothing without its scale
            st.plotly_chart(_ui.heatmap(panel["frequency"], "share of channels dropping each position",
                                        colorscale="Viridis", zmin=0, zmax=1, colorbar="share", height=280, wrap=30),
                            key=f"kind_{panel['kind']}_freq")
            if panel["sees"] is not None:
                st.metric("input a 3×3 stem with this mask still sees", panel["sees"],
                          help="Share of input pixels that reach at least one kept neuron of the layer, if this "
                               "mask followed a stride-1 3×3 conv.")
    st.caption(mask_views.kinds_caption(shape, ratio))

if view == "What one 3×3 filter sees":
    stem = mask_views.model_stem(model)
    if stem is not None:
        stem_keep, source_text = stem
    else:
        c1, c2 = st.columns(2)
        with c1:
            kind = st.radio("Mask kind", ["random", "SM", "DC"], horizontal=True, key="filter_kind")
        with c2:
            f_ratio = st.slider("Drop ratio", 0.05, 0.95, 0.7, 0.05, key="filter_ratio")
        stem_keep, source_text = mask_views.stand_in_stem(kind, f_ratio, width, dataset)
    c, h, w = stem_keep.shape
    c1, c2, c3 = st.columns(3)
    with c1:
        f_channel = st.slider("Stem channel", 0, c - 1, 0, key="filter_channel")
    with c2:
        f_row = st.slider("Neuron row", 0, h - 1, h // 2, key="filter_row")
    with c3:
        f_col = st.slider("Neuron column", 0, w - 1, w // 2, key="filter_col")
    x, y = _ui.images(dataset, 1)
    view = mask_views.filter_view(stem_keep, x[0], f_channel, f_row, f_col)
    m1, m2, m3 = st.columns(3)
    m1.metric(f"channel {f_channel} sees", view["channel_sees"])
    m2.metric("the layer sees", view["layer_sees"])
    m3.metric("bound for one shared pattern", view["bound"],
              help="9 × share of kept neurons: the most a 3×3 stem can see when every channel has the same mask")
    left, middle = st.columns(2)
    with left:
        _ui.show_array(view["seen"], caption=f"pixels channel {f_channel}'s 3×3 filter still reads (the rest darkened)")
    with middle:
        st.plotly_chart(_ui.heatmap(view["channels_seeing"], "how many channels see each pixel", colorscale="Viridis",
                                    zmin=0, zmax=c, colorbar="channels", height=300, wrap=40), key="filter_count")
    # the path counts get half the page, numbers only where a path exists: a 9×9 grid of zeros was unreadable
    field_text = [[str(int(v)) if v else "" for v in row] for row in view["field"].tolist()]
    fig = _ui.heatmap(view["field"], f"input paths into a next-layer neuron at ({f_row}, {f_col})",
                      colorscale="Blues", zmin=0, colorbar="paths", height=400, text=field_text, wrap=44)
    fig.data[0].update(x=view["field_cols"], y=view["field_rows"])
    window = _ui.heatmap(view["window"], f"3×3 window of that neuron: live channels (of {c}) at each offset",
                         colorscale="Greens", zmin=0, zmax=c, colorbar="channels", height=300,
                         x_title="column offset", y_title="row offset", text=view["window"], wrap=40)
    window.data[0].update(x=[-1, 0, 1], y=[-1, 0, 1])
    left, right = st.columns(2)
    with left:
        st.plotly_chart(fig, key="filter_field")
    with right:
        st.plotly_chart(window, key="filter_window")
    st.caption(f"Using {source_text}. A neuron of the next 3×3 conv reads a 3×3 window of every stem channel; "
               "only kept stem neurons carry anything, and each of those reads its own 3×3 patch of pixels. "
               "Without masks the paths form a 5×5 pyramid of 1-2-3-2-1 per channel.")
