"""MLflow, behind the Tracker protocol the harness logs through: the store, the run tracker, and every name."""
