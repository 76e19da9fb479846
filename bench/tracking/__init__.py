"""MLflow, behind the Tracker protocol the harness logs through: the store, the run tracker, and every name.

The package itself imports nothing, so that light modules (names, locks) load without MLflow; the resolver of
store-relative artifact URIs (bench.tracking.artifacts) is registered by bench.tracking.store, which every MLflow
path of the suite goes through, and by the entry point in pyproject.toml."""
