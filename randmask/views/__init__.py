"""Views: what the app's pages call (catalog, gallery, masks, tables, images, jobs, the protocol views).
May import randmask.results, randmask.experiments, randmask.attacks and randmask.core; never Streamlit."""
