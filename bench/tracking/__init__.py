"""MLflow, behind the Tracker protocol the harness logs through: the store, the run tracker, and every name.

Importing the package registers the resolver of store-relative artifact URIs (bench.tracking.artifacts)."""

from bench.tracking import artifacts  # noqa: F401  (registers the resolver with MLflow)
