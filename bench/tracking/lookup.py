"""Looking a run up by id: "there is no such run" (the user's id is wrong) told apart from a store that fails."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from bench.errors import UserError, first_line
from bench.tracking.store import redact


def get_run(client: MlflowClient, run_id: str) -> Run:
    """The run, or a one-line UserError: no run with that id, or the store's own problem, named."""
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise UserError(f"no run with id {run_id!r} in {redact(client.tracking_uri)}; "
                            "give the id of a run made by bench.run") from None
        raise UserError(f"the tracking store {redact(client.tracking_uri)} failed to look up run {run_id!r} "
                        f"({e.error_code}: {first_line(e)})") from None
    except Exception as e:  # the store's driver or the network, below MLflow's own errors
        raise UserError(f"the tracking store {redact(client.tracking_uri)} failed to look up run {run_id!r} "
                        f"({type(e).__name__}: {first_line(e)})") from None
