"""Tracked runs -> pandas -> a Markdown report with seaborn figures (build.py puts the parts together)."""
