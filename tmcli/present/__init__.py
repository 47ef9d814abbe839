"""Showing results: terminal tables (`terminal`), the self-contained HTML report
(`html_report`), its Plotly figures (`figures/`) and their PNG export (`png`). Never imports
`generation`.
"""
