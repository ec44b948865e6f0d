"""The participant server's script: `python -m study serve --db DB` runs it (not `streamlit run` by hand).

It sits alone in this folder on purpose: with a `pages/` folder beside it, Streamlit would serve every
page there. It runs the labeling page's code for every path and query (no st.navigation, so an unknown
path shows the labeling flow, not a "page not found" dialog), and nothing else.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
LABEL_PAGE = ROOT / "pages" / "study_label.py"
# the labeling page imports the study package: installed with the project (pip install -e .), no path tricks


@st.cache_resource(show_spinner=False)
def _page_code():
    return compile(LABEL_PAGE.read_text(encoding="utf-8"), str(LABEL_PAGE), "exec")


st.set_page_config(page_title="Image labeling study", page_icon=":material/image:", layout="centered",
                   initial_sidebar_state="collapsed", menu_items={})
exec(_page_code(), {"__name__": "__main__", "__file__": str(LABEL_PAGE)})
