"""The report's Plotly figures, each with the uncertainty the study lacked.

One function per figure, by what it shows: against temperature (`temperature`), along the
completion (`position`), span kinds and canonical modes (`modes`), against the truncation setting
(`sampling`); `style` holds what they share.
Each takes the analysis' frames (groups, fits, samples) and returns a
`plotly.graph_objects.Figure`; nothing here writes files. Every point carries its interval (error bars or a band) and its sample count in the hover;
groups with too few samples are drawn hollow and named in a warning on the figure itself, so a
screenshot cannot lose the caveat.
"""
