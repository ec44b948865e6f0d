"""Mask patterns: heatmaps of a model's masks, per-layer drop statistics, Random vs SM vs DC side by side, and
what one 3×3 filter can still see through a mask. Masks come from the notation and mask seed: no weights needed."""
from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # a page run on its own (tests) still finds the project
    sys.path.insert(0, ROOT)
from pages import _ui  # noqa: E402
from randmask import images, mask_views  # noqa: E402
from randmask.notation import canonical  # noqa: E402

BLOCK_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"]  # blocks 0-4, all dark enough on white

_ui.ensure_app()
st.title("Mask patterns")
dataset = _ui.current_dataset()

top = st.columns([2, 3, 1, 1])
with top[0]:
    mode = st.radio("Show the masks of", ["a model", "a notation"], horizontal=True, key="masks_mode")
if mode == "a model":
    entries = [e for e in _ui.catalog().for_dataset(dataset) if e.is_masked]
    picked_masked = [e.key for e in _ui.picked() if e.is_masked]
    with top[1]:
        entry = _ui.entry_select("Model", entries, picked_masked[0] if picked_masked else None, key="masks_model")
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

layer, keep, channel = None, None, 0
if stats:
    names = [row["layer"] for row in stats]
    by_name = {row["layer"]: row for row in stats}
    c1, c2 = st.columns([2, 3])
    with c1:
        layer = st.selectbox("Layer", names, key="masks_layer",
                             format_func=lambda n: f"block {by_name[n]['block']} · {n} · {by_name[n]['shape']}")
    keep = mask_views.get_mask(model, layer)
    with c2:
        channel = st.slider("Channel", 0, keep.shape[0] - 1, 0, key="masks_channel")
else:
    st.info(f"{notation} has no masked layers (a normal network). The comparison and filter tabs below still "
            "show what masks of a chosen ratio would do.")

VIEWS = ["Heatmaps", "Drop statistics", "Random vs SM vs DC", "What one 3×3 filter sees"]
# one view at a time (not st.tabs, which draws every tab's charts): page switches stay fast
view = st.segmented_control("View", VIEWS, default=VIEWS[0], key="masks_view", label_visibility="collapsed") \
    or VIEWS[0]

if view == "Heatmaps":
    if keep is None:
        st.write("No masks to show.")
    else:
        row = by_name[layer]
        left, right = st.columns(2)
        with left:
            st.plotly_chart(_ui.heatmap(keep[channel].int(), f"{layer}, channel {channel}: white kept, black dropped",
                                        colorscale=_ui.KEEP_COLORS, zmin=0, zmax=1, wrap=40), key="map_channel")
        with right:
            st.plotly_chart(_ui.heatmap(mask_views.drop_frequency(keep), "share of the layer's channels dropping each "
                                        "position", colorscale="Viridis", zmin=0, zmax=1, colorbar="share", wrap=40),
                            key="map_frequency")
        st.caption(f"Nominal drop ratio {row['ratio']:g}, measured {row['measured_drop_ratio']:.4f} "
                   f"({row['dropped']:,} of {row['neurons']:,} neurons); per channel between "
                   f"{row['channel_drop_min']:.3f} and {row['channel_drop_max']:.3f}; "
                   f"{row['dead_channels']} channel(s) dropped entirely.")
        last = min(channel + 16, keep.shape[0]) - 1
        _ui.show_array(mask_views.mask_montage(keep, channel, 16, columns=8, factor=3),
                       f"channels {channel}–{last}, left to right, top to bottom (light kept, dark dropped)")

if view == "Drop statistics":
    if not stats:
        st.write("No masked layers.")
    else:
        table = [{"layer": r["layer"], "block": r["block"], "kind": r["kind"], "shape": r["shape"],
                  "ratio": r["ratio"], "measured": r["measured_drop_ratio"], "dropped": r["dropped"],
                  "neurons": r["neurons"], "dead channels": r["dead_channels"],
                  "kept by no channel": r["positions_dropped_in_all_channels"]} for r in stats]
        st.dataframe(table, hide_index=True, column_config={
            "measured": st.column_config.NumberColumn(format="%.4f"),
            "kept by no channel": st.column_config.NumberColumn(
                format="%.3f", help="Share of the layer's positions that no channel keeps")})
        fig = go.Figure()
        for block in dict.fromkeys(r["block"] for r in stats):  # one trace per block: the legend names the colours
            mine = [r for r in stats if r["block"] == block]
            fig.add_bar(x=[r["layer"] for r in mine], y=[r["measured_drop_ratio"] for r in mine],
                        marker_color=BLOCK_COLORS[int(block) % len(BLOCK_COLORS)], name=f"block {block}",
                        hovertemplate="%{x}: %{y:.4f}<extra>block " + str(block) + "</extra>")
        fig.add_scatter(x=[r["layer"] for r in stats], y=[r["ratio"] for r in stats], mode="markers",
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
    shape = tuple(keep.shape) if keep is not None else (width, 32, 32)
    default_ratio = float(by_name[layer]["ratio"]) if layer else 0.7
    c1, c2 = st.columns(2)
    with c1:
        ratio = st.slider("Drop ratio", 0.05, 0.95, default_ratio, 0.05, key="kinds_ratio")
    with c2:
        seed = int(st.number_input("Seed", 0, 10_000, 0, key="kinds_seed"))
    kinds = mask_views.kind_comparison(shape, ratio, seed)
    titles = {"random": "Random Mask", "SM": "SM (same mask, all channels)", "DC": "DC (drop whole channels)"}
    cols = st.columns(3)
    ch = min(channel, shape[0] - 1)
    for col, (kind, mask) in zip(cols, kinds.items(), strict=True):
        with col:
            st.markdown(f"**{titles[kind]}**")
            st.plotly_chart(_ui.heatmap(mask[ch].int(), f"channel {ch}: white kept, black dropped",
                                        colorscale=_ui.KEEP_COLORS, zmin=0, zmax=1, height=280, wrap=30),
                            key=f"kind_{kind}_channel")
            # a colour bar on each: DC's map is one flat colour, which means nothing without its scale
            st.plotly_chart(_ui.heatmap(mask_views.drop_frequency(mask), "share of channels dropping each position",
                                        colorscale="Viridis", zmin=0, zmax=1, colorbar="share", height=280, wrap=30),
                            key=f"kind_{kind}_freq")
            if shape[1] == shape[2] and shape[1] >= 8:
                cover = mask_views.coverage_summary(mask)
                st.metric("input a 3×3 stem with this mask still sees", f"{100 * cover['layer_sees']:.1f}%",
                          help="Share of input pixels that reach at least one kept neuron of the layer, if this "
                               "mask followed a stride-1 3×3 conv.")
    st.caption(f"Layer shape {shape[0]}×{shape[1]}×{shape[2]}, drop ratio {ratio:g}. With one pattern shared by "
               f"all channels, a 3×3 stem sees at most 9 × (1 − ratio) = {100 * min(1, 9 * (1 - ratio)):.0f}% of "
               "the image; independent patterns per channel cover it almost entirely.")

if view == "What one 3×3 filter sees":
    stem = mask_views.stem_mask(model)
    if stem is not None:
        stem_name, stem_keep = stem
        source_text = f"the model's stem mask ({stem_name}, {tuple(stem_keep.shape)})"
    else:
        c1, c2 = st.columns(2)
        with c1:
            kind = st.radio("Mask kind", ["random", "SM", "DC"], horizontal=True, key="filter_kind")
        with c2:
            f_ratio = st.slider("Drop ratio", 0.05, 0.95, 0.7, 0.05, key="filter_ratio")
        stem_keep = mask_views.kind_comparison((width, 32, 32) if dataset != "mnist" else (width, 28, 28),
                                            f_ratio, 0)[kind]
        source_text = f"a {kind} mask of ratio {f_ratio:g} on a {width}-channel stem (this model's stem is unmasked)"
    c, h, w = stem_keep.shape
    c1, c2, c3 = st.columns(3)
    with c1:
        f_channel = st.slider("Stem channel", 0, c - 1, min(channel, c - 1), key="filter_channel")
    with c2:
        f_row = st.slider("Neuron row", 0, h - 1, h // 2, key="filter_row")
    with c3:
        f_col = st.slider("Neuron column", 0, w - 1, w // 2, key="filter_col")
    x, y = _ui.images(dataset, 1)
    coverage = mask_views.input_coverage(stem_keep)
    summary = mask_views.coverage_summary(stem_keep)
    m1, m2, m3 = st.columns(3)
    m1.metric(f"channel {f_channel} sees", f"{100 * float((coverage[f_channel] > 0).float().mean()):.1f}% of pixels")
    m2.metric("the layer sees", f"{100 * summary['layer_sees']:.1f}% of pixels")
    m3.metric("bound for one shared pattern", f"{100 * summary['shared_mask_bound']:.0f}%",
              help="9 × share of kept neurons: the most a 3×3 stem can see when every channel has the same mask")
    left, middle, right = st.columns(3)
    with left:
        seen = images.overlay_keep(x[0], coverage[f_channel] > 0, dim=0.12)
        _ui.show_array(images.upscale_nearest(seen, 8),
                       caption=f"pixels channel {f_channel}'s 3×3 filter still reads (the rest darkened)")
    with middle:
        st.plotly_chart(_ui.heatmap((coverage > 0).sum(0), "how many channels see each pixel", colorscale="Viridis",
                                    zmin=0, zmax=c, colorbar="channels", height=300, wrap=30), key="filter_count")
    with right:
        field = mask_views.receptive_field(stem_keep, f_row, f_col)
        r0, r1, c0, c1_ = max(0, f_row - 4), min(h, f_row + 5), max(0, f_col - 4), min(w, f_col + 5)
        fig = _ui.heatmap(field[r0:r1, c0:c1_], f"input paths into a next-layer neuron at ({f_row}, {f_col})",
                          colorscale="Blues", zmin=0, colorbar="paths", height=300, text=field[r0:r1, c0:c1_],
                          wrap=30)
        fig.data[0].update(x=list(range(c0, c1_)), y=list(range(r0, r1)))
        st.plotly_chart(fig, key="filter_field")
    window = mask_views.filter_window(stem_keep, f_row, f_col)
    fig = _ui.heatmap(window.sum(0), f"3×3 window of that neuron: live channels (of {c}) at each offset",
                      colorscale="Greens", zmin=0, zmax=c, colorbar="channels", height=260,
                      x_title="column offset", y_title="row offset", text=window.sum(0), wrap=34)
    fig.data[0].update(x=[-1, 0, 1], y=[-1, 0, 1])
    with st.columns([1, 2])[0]:
        st.plotly_chart(fig, key="filter_window")
    st.caption(f"Using {source_text}. A neuron of the next 3×3 conv reads a 3×3 window of every stem channel; "
               "only kept stem neurons carry anything, and each of those reads its own 3×3 patch of pixels. "
               "Without masks the paths form a 5×5 pyramid of 1-2-3-2-1 per channel.")
