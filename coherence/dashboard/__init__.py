"""The Streamlit dashboard (stage 5: show): selections → analysis requests → cache → figures.

Pure modules (no streamlit): ``workspace_scan`` (what the workspace holds) and ``selection``
(the frozen Selection, its URL form and the requests it makes). Streamlit modules: ``loaders``
(cached readers), ``sidebar`` (widgets → Selection), ``compute`` (jobs: submit, progress,
cancel, attach), ``panels`` (one render function per tab) and ``page`` (the router that the
repository's ``app.py`` calls).
"""
