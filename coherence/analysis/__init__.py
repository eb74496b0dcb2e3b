"""Influence estimators, observables, summaries and figure builders (stage 3: analyze).

Never imports streamlit.
"""
