"""The Streamlit dashboard (stage 5: show): selections → analysis requests → cache → figures.

Pure modules (no streamlit): ``workspace_scan`` (what the workspace holds), ``selection``
(the frozen Selection, its defaults and the requests it makes), ``controls`` (the table of
sidebar controls that reads and writes the URL and the session state; its kinds in
``control_kinds`` and ``control_rows``), ``checks`` (why a selection cannot be computed,
asking the request for the rules it owns), ``sweeps`` (the sweep panels' requests) and
``sweep_views`` (their lines, maps and provenance, shared with the HTML report).
Streamlit modules: ``loaders`` (cached readers), ``sidebar`` (widgets → Selection),
``compute`` (jobs: submit, progress, cancel, attach), ``panels`` (one render function per
tab), ``first_paint`` (a new page's headline chart before the rest) and ``page`` (the router
that the repository's ``app.py`` calls).
"""
