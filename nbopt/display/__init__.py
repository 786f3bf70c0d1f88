"""Front-end: how results look. ``format`` (units), ``tables`` (HTML/text), ``figures`` (matplotlib).

The core never imports this package at module level; a result's ``_repr_html_``/``plot`` imports it lazily.
"""
