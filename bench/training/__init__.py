"""Training a variant: the loop (loop.py), a run's identity in the store (identity.py), and a tracked run's life
from start or resume to its end (lifecycle.py)."""
