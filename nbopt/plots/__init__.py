"""Matplotlib front-ends (imported only by notebooks and magics, never by the core)."""
