"""Streamlit glue shared by app.py and the pages: cached loaders, the model picker, error display, image helpers.

No computation lives here (that is randmask's catalog, images, mask_views, gallery, tables and the *_views
modules); this only connects them to Streamlit's caches and widgets.
Models come from st.cache_resource and are never mutated by a page (eval mode; attacks restore the model).
"""
from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from randmask.core import settings
from randmask.core.device import default_device, device_text
from randmask.experiments.checkpoint import WEIGHTS_FILE
from randmask.experiments.data import CLASSES, load_test_sample
from randmask.results.zoo import list_zoo
from randmask.views.catalog import (
    Catalog,
    ModelEntry,
    discover_models,
    keyed,
    load_entry,
    picker_labels,
    resolve_picks,
    select,
    trained_summary,
    unique_names,
    untrained_names,
)
from randmask.views.images import display_image, float_batch

PICK_KEY, DATASET_KEY = "picked_models", "picked_dataset"
PICKS, DATASET = "picks", "dataset"  # plain copies of the picker's values: they survive runs without the sidebar
# images are never smoothed, and never wider than their column (a narrow window shrinks them instead of letting
# them run over their neighbours)
PIXELATED_CSS = ("<style>img { image-rendering: crisp-edges; image-rendering: pixelated; } "
                 "[data-testid='stImage'] div, [data-testid='stImage'] img { max-width: 100%; } "
                 "[data-testid='stImage'] img { height: auto; } "
                 # the picker's chips show whole model names, on two lines where needed, not 'Normal ResNet-18 · …'
                 "[data-testid='stSidebar'] [data-tag] { max-width: 100%; height: auto; } "
                 "[data-testid='stSidebar'] [data-tag] > span { white-space: normal; overflow: visible; "
                 "text-overflow: clip; max-width: none; }</style>")
# the main column's width at a 1280 px window with the sidebar open (measured 820 px, Chromium): tables choose
# their columns to fit it
TABLE_WIDTH_PX = 800


# ------------------------------------------------------------------------------------------------ app mode
def ensure_app() -> None:
    """Make sure app.py (navigation, picker) runs around this page, and put the glossary in its sidebar.

    With a pages/ folder beside app.py, Streamlit starts every server in its old multipage mode and only leaves
    it when app.py calls st.navigation. If a fresh server's first request asks for a sub-page (a bookmark),
    Streamlit runs that page straight from pages/, without app.py, and lists every file there in the sidebar.
    Leaving that mode here and rerunning sends the request through app.py like every later one."""
    from streamlit import config

    # AppTest re-enters that mode before every run; a rerun here would swallow its button clicks
    if not config.get_option("global.appTest") and _left_pages_mode():
        st.rerun()
    glossary()  # drawn by the page, not app.py: every researcher page has it (AppTest reruns the page alone)


def _left_pages_mode() -> bool:
    """Leave Streamlit's pages/-folder mode; True if it was on."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without this mode
        return False
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        return True
    return False


# ------------------------------------------------------------------------------------------------ loading
@st.cache_resource(max_entries=64, show_spinner=False)
def _load(entry: ModelEntry, stamp: float) -> torch.nn.Module:
    model = load_entry(entry, default_device())
    for param in model.parameters():
        param.requires_grad_(False)  # pages only read models; attacks need gradients w.r.t. inputs only
    return model


def model_for(entry: ModelEntry) -> torch.nn.Module:
    """The entry's model (cached per entry and checkpoint file time, so a retrained folder reloads)."""
    stamp = 0.0
    if entry.folder:
        weights = Path(entry.folder) / "model.safetensors"
        stamp = weights.stat().st_mtime if weights.exists() else 0.0
    with st.spinner(f"Loading {entry.name}…"):
        return _load(entry, stamp)


@st.cache_resource(max_entries=32, show_spinner=False)
def structure(notation: str, dataset: str, width: int, mask_seed: int) -> torch.nn.Module:
    """An untrained model of this notation: its masks are exactly the trained model's (they come from the seed)."""
    return load_entry(ModelEntry(key=f"structure:{notation}", notation=notation, dataset=dataset,
                                                 source="untrained", width=width, mask_seed=mask_seed))


@st.cache_data(max_entries=4, show_spinner="Loading test images…")
def _sample(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_test_sample(dataset, 1000)
    return x.numpy(), y.numpy()


def images(dataset: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images as floats in [0,1] and their labels (CPU)."""
    return float_batch(*_sample(dataset), n)


def _files_stamp(root: Path, *patterns: str) -> tuple:
    """(path, mtime_ns, size) of the files under root matching the patterns: a model added, exported, retrained
    or removed changes it."""
    if not root.is_dir():
        return (str(root),)
    stamp = [str(root)]
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            with contextlib.suppress(OSError):  # removed between the listing and the stat
                info = path.stat()
                stamp.append((str(path), info.st_mtime_ns, info.st_size))
    return tuple(stamp)


def _zoo_stamp() -> tuple:
    return _files_stamp(settings.zoo_root(), "*/*/*")


def _catalog_stamp() -> tuple:
    return _zoo_stamp(), _files_stamp(settings.user_runs_root(), "*/config.json", f"*/{WEIGHTS_FILE}")


@st.cache_data(max_entries=8, show_spinner=False)
def _catalog(stamp: tuple) -> Catalog:
    return discover_models()


def catalog() -> Catalog:
    """Zoo, your trained models and untrained stand-ins. Reading them costs ~0.5 s of CPU time (every zoo folder's
    config checked) and a page asks up to four times a run, so the answer is kept for as long as the files it
    reads stay the same (their names, times and sizes: a few hundred stat calls)."""
    return _catalog(_catalog_stamp())


@st.cache_data(max_entries=8, show_spinner=False)
def _zoo_rows(stamp: tuple) -> list[dict]:
    return list_zoo(settings.zoo_root())


def zoo_rows() -> list[dict]:
    """randmask.results.zoo.list_zoo (every planned entry and its status: ~1 s of CPU time), kept while the zoo's files
    stay the same."""
    return _zoo_rows(_zoo_stamp())


# ------------------------------------------------------------------------------------------------ picker
def current_dataset() -> str:
    return st.session_state.get(DATASET_KEY) or st.session_state.get(DATASET, "cifar10")


def _stored_picks() -> list[str] | None:
    """The picker's value this run, else the copy from the last run that drew it, else None (never picked)."""
    for key in (PICK_KEY, PICKS):
        if key in st.session_state:
            return list(st.session_state[key])
    return None


def picked_keys() -> list[str]:
    """The keys of the models chosen in the sidebar (or of the default choice when a page runs without it)."""
    return resolve_picks(catalog().for_dataset(current_dataset()), _stored_picks())


def picked() -> list[ModelEntry]:
    """The models chosen in the sidebar (or the default choice when a page runs without the sidebar)."""
    return select(catalog().for_dataset(current_dataset()), picked_keys())


def sidebar() -> None:
    """The model picker shared by all pages: data set, then models from the zoo, your runs and stand-ins."""
    cat = catalog()
    with st.sidebar:
        st.markdown("### Models")
        datasets = cat.datasets or ["cifar10"]
        if current_dataset() not in datasets:
            st.session_state[DATASET_KEY] = datasets[0]
        elif DATASET_KEY not in st.session_state:
            st.session_state[DATASET_KEY] = current_dataset()
        if len(datasets) > 1:
            st.session_state[DATASET] = st.selectbox("Data set", datasets, key=DATASET_KEY)
        entries = cat.for_dataset(current_dataset())
        labels = picker_labels(entries)
        # the stored picks less models that vanished (a removed run, another data set)
        st.session_state[PICK_KEY] = resolve_picks(entries, _stored_picks())
        st.session_state[PICKS] = st.multiselect(
            "Compare these models", list(labels), key=PICK_KEY, format_func=lambda k: labels.get(k, k),
            help="Used by the patch-shuffle, noise and robustness pages. Trained models show their clean test "
                 "accuracy; UNTRAINED ones are built from the notation (random weights).")
        if not any(e.trained for e in entries):
            st.warning("No trained models yet: the zoo is empty (or still training). Pages use untrained "
                       "stand-ins, marked UNTRAINED; the mask pages need no weights at all.")
        else:
            st.caption(trained_summary(cat, current_dataset()))
        for problem in cat.problems:
            st.caption(f"⚠ skipped {problem}")
        st.caption(f"Device: {device_text(default_device())}")


def named_models(entries: list[ModelEntry]) -> dict[str, torch.nn.Module]:
    """{distinct display name: cached model} for the entries, in order."""
    return {name: model_for(e) for name, e in zip(unique_names(entries), entries, strict=True)}


def entry_select(label: str, entries: list[ModelEntry], default_key: str | None = None,
                 key: str | None = None, help: str | None = None) -> ModelEntry | None:
    """A selectbox over entries showing their labels (with the UNTRAINED badge)."""
    if not entries:
        st.warning(f"{label}: no model available for this data set.")
        return None
    by_key = keyed(entries)
    keys = list(by_key)
    index = keys.index(default_key) if default_key in by_key else 0
    choice = st.selectbox(label, keys, index=index, key=key, format_func=lambda k: by_key[k].label, help=help)
    return by_key[choice]


def untrained_note(entries: list[ModelEntry]) -> None:
    names = untrained_names(entries)
    if names:
        st.info(f"UNTRAINED (random weights, built from notation): {', '.join(names)}. Their predictions show "
                "how the page works, not what the paper reports; train them on the Train page or wait for the zoo.")


# ------------------------------------------------------------------------------------------------ errors
@contextlib.contextmanager
def readable_errors(what: str = "") -> Iterator[None]:
    """Show any error as a message on the page (details folded away), never as a bare traceback."""
    try:
        yield
    except ValueError as exc:  # RandmaskError and its kin are ValueErrors: bad input, said in one line
        st.error(f"{what + ': ' if what else ''}{exc}")
    except Exception as exc:  # a bug or an environment problem: say so, keep the details at hand
        st.error(f"{what + ': ' if what else ''}{type(exc).__name__}: {exc}")
        with st.expander("Details"):
            st.code(traceback.format_exc(), language=None)


def progress_callback(text: str):
    """A (done, total) callback that drives an st.progress bar; returns (callback, bar). The callback's
    `.stage(words)` puts what is happening now in front of the count."""
    bar = st.progress(0.0, text=text)
    now = {"stage": text, "done": 0, "total": 0}

    def show() -> None:
        done, total = now["done"], now["total"]
        count = f" · {done}/{total}" if total else ""  # no count before the first one comes in
        bar.progress(min(1.0, done / max(1, total)), text=now["stage"] + count)

    def report(done: int, total: int) -> None:
        now.update(done=done, total=total)
        show()

    def stage(words: str) -> None:
        now["stage"] = words[:1].upper() + words[1:] + "…"
        show()

    report.stage = stage
    return report, bar


# ------------------------------------------------------------------------------------------------ images
def pixelated() -> None:
    """Ask the browser never to smooth images (they are already upscaled by integer factors)."""
    st.markdown(PIXELATED_CSS, unsafe_allow_html=True)


def show_image(image, caption: str | None = None, size: int = 224) -> None:
    """A C×H×W image, nearest-neighbour upscaled to about `size` pixels, shown at its own size."""
    show_array(display_image(image, size), caption)


def show_array(array: np.ndarray, caption: str | None = None) -> None:
    """An H×W(×3) uint8 array at its own pixel size, losslessly (PNG: JPEG would smear the pixel blocks)."""
    st.image(array, caption=caption, width=int(array.shape[1]), output_format="PNG")


def class_name(dataset: str, label: int) -> str:
    return CLASSES[dataset][int(label)]


# ------------------------------------------------------------------------------------------------ navigation
_PAGES: dict[str, object] = {}


def register_pages(pages: dict[str, object]) -> None:
    """app.py hands over its st.Page objects so pages can link to each other."""
    _PAGES.clear()
    _PAGES.update(pages)


def link(name: str, label: str, icon: str | None = None) -> None:
    page = _PAGES.get(name)
    if page is not None:
        st.page_link(page, label=label, icon=icon)
    else:
        st.markdown(f"- {label}")


# ------------------------------------------------------------------------------------------------ plots
def wrap_title(title: str, width: int) -> str:
    """Plotly never wraps a title: break it into lines of at most `width` characters (<br>), so a chart in a
    narrow column keeps its whole title."""
    import textwrap

    return "<br>".join(textwrap.wrap(title, width)) or title


def heatmap(z, title: str, *, colorscale="Greys_r", zmin=None, zmax=None, colorbar: str = "", height: int = 330,
            x_title: str = "column (pixel)", y_title: str = "row (pixel)", text=None, wrap: int = 44,
            text_size: int = 14):
    """A plotly heatmap of an H×W array with row 0 at the top, square cells, labelled axes and a title wrapped
    at `wrap` characters (pick it for the column the chart sits in)."""
    import plotly.graph_objects as go

    z = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    if text is not None:
        text = text.detach().cpu().numpy() if isinstance(text, torch.Tensor) else np.asarray(text)
    fig = go.Figure(go.Heatmap(z=z, colorscale=colorscale, zmin=zmin, zmax=zmax, text=text,
                               texttemplate="%{text}" if text is not None else None,
                               textfont={"size": text_size},  # readable cell numbers, not shrunk to fit
                               colorbar={"title": {"text": colorbar}} if colorbar else None,
                               showscale=bool(colorbar),
                               hovertemplate="row %{y}, column %{x}: %{z}<extra></extra>"))
    title = wrap_title(title, wrap)
    lines = title.count("<br>") + 1
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=height + 18 * (lines - 1),
                      margin={"l": 10, "r": 10, "t": 22 + 18 * lines, "b": 10})
    fig.update_xaxes(title=x_title, constrain="domain")
    fig.update_yaxes(title=y_title, autorange="reversed", scaleanchor="x", constrain="domain")
    return fig


KEEP_COLORS = [[0.0, "#202020"], [1.0, "#f5f5f5"]]  # dropped = near black, kept = near white


# ------------------------------------------------------------------------------------------------ tables
def fitted_table(frame, key: str | None, *, fold=(), budget: int = TABLE_WIDTH_PX, right=(), tight: bool = False,
                 what: str = "") -> None:
    """A dataframe that fits the page: the named columns holding one value (and columns with no value at all) said
    in a caption instead, the leading columns that fit shown, with `key` a toggle for every column (it scrolls)."""
    from randmask.views import tables

    frame, same = tables.fold_columns(frame, fold)
    kw = tables.TIGHT if tight else {}
    fits = tables.columns_that_fit(frame, budget, **kw)
    hidden = [c for c in frame.columns if c not in fits]
    if hidden and key and st.toggle(f"Every column ({len(frame.columns)}; scroll sideways)", key=key):
        fits, hidden = list(frame.columns), []
    shown = frame[fits]
    st.dataframe(shown, hide_index=True, column_config={
        c: st.column_config.TextColumn(width=tables.column_width(shown[c], str(c), **kw),
                                       alignment="right" if c in right else None) for c in shown.columns})
    where = ("the toggle shows them" if key else "") + what
    notes = same + ([f"not shown: {', '.join(map(str, hidden))} ({where})"] if hidden else [])
    if notes:
        text = "; ".join(notes)
        st.caption(text[0].upper() + text[1:] + ".")


# ------------------------------------------------------------------------------------------------ glossary
GLOSSARY = {
    "clean accuracy": "Share of the unaltered test images a network classifies correctly.",
    "robust accuracy": "Accuracy on adversarial images (a white-box attack's, unless said otherwise).",
    "defense rate": "A target's accuracy on transferred adversarial images that fool the source network.",
    "transfer (black-box)": "Adversarial images crafted against one network (the source) shown to another (the "
                            "target), whose weights the attack never saw.",
    "white-box": "The attack uses the attacked network's own gradients.",
    "gray-box": "The attacker has a network of the same notation and training but another initialisation or "
                "mask seed (DIF = different mask), not the attacked one's weights.",
    "ε (epsilon)": "An attack's budget: the most any pixel value may change, in 0–255 units (ε 16 = 16/255).",
    "l-inf (ℓ∞)": "The largest change of any one pixel value; 'l-inf 8/255' = no value moved more than 8 levels. "
                  "l2 = the square root of the summed squared changes.",
    "κ (kappa)": "CW's confidence in logits: the attack looks for an image whose wrong class wins by at least κ; a "
                 "large κ may find nothing.",
    "FGSM16, PGD16, PGD2,16, CW40": "The paper's attack notation: FGSM one step of ε 16; PGD16 20 steps of 1 "
                                    "within ε 16; PGD2,16 steps of 2; CW40 CW-l2 with κ 40.",
    "drop ratio": "The share of positions a Random Mask zeroes in every channel, for good (0.7-Shallow: 0.7).",
    "Shallow / Deep / B12": "Which blocks are masked: 0–2, 3–4, or the blocks named (block 0 = the stem conv).",
    "DC / SM": "Mask kinds: DC drops whole channels; SM repeats one spatial mask in every channel.",
    "EN": "An ensemble of 5 networks with different mask seeds, logits averaged.",
    "×2": "The masked blocks have twice the channels.",
    "body.layer1.0.mask1": "A masked layer's name in the model: stage 1, its unit 0, after the unit's first conv "
                           "(mask2: after the second, shortcut.2: the projection shortcut; body.mask1: the stem).",
    "partly measured": "A target with numbers of ours in some of a table's columns, only the paper's in others.",
    "not trained / not measured here": "No such model in the zoo or your runs / trained, but no result of ours "
                                       "in results/ yet.",
    "95% CI": "A Wilson 95% interval for a share measured on n images.",
    "UNTRAINED": "A stand-in built from the notation with random weights: right masks, meaningless predictions.",
}


def glossary() -> None:
    """The field's words, one line each, folded away at the bottom of every researcher page's sidebar."""
    with st.sidebar.expander("Glossary", icon=":material/menu_book:"):
        st.caption("\n".join(f"- **{term}**: {text}" for term, text in GLOSSARY.items()))  # small: a narrow column
