"""What the harness needs from a tracker. The harness knows nothing of MLflow: tests pass NullTracker."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol

from torch import nn


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_analysis_metrics(self, analysis: str, metrics: dict[str, float], step: int) -> None: ...

    def log_new_params(self, params: dict[str, Any]) -> None: ...

    def log_settings(self, settings: dict[str, Any], step: int) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: Path, artifact_dir: str) -> None: ...

    def save_checkpoint(self, state: dict[str, Any]) -> None: ...

    def log_model(self, model: nn.Module, epoch: int | None = None) -> None: ...


class NullTracker:
    """Tracks nothing (tests, and `--no-tracking` speed measurements)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_analysis_metrics(self, analysis: str, metrics: dict[str, float], step: int) -> None:
        pass

    def log_new_params(self, params: dict[str, Any]) -> None:
        pass

    def log_settings(self, settings: dict[str, Any], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_dir: str) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def log_model(self, model: nn.Module, epoch: int | None = None) -> None:
        pass


class MemoryTracker(NullTracker):
    """Keeps metrics, artifact names and the last checkpoint in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.analyses: dict[str, dict[int, dict[str, float]]] = {}  # analysis -> step -> metrics
        self.params: dict[str, Any] = {}
        self.settings: dict[int, dict[str, list[Any]]] = {}  # step -> setting -> every value used at that step
        self.artifacts: list[str] = []
        self.tags: dict[str, str] = {}
        self.checkpoint: dict[str, Any] | None = None
        self.model: nn.Module | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.setdefault(step, {}).update(metrics)

    def log_analysis_metrics(self, analysis: str, metrics: dict[str, float], step: int) -> None:
        self.analyses.setdefault(analysis, {}).setdefault(step, {}).update(metrics)

    def log_new_params(self, params: dict[str, Any]) -> None:
        for k, v in params.items():
            self.params.setdefault(k, v)

    def log_settings(self, settings: dict[str, Any], step: int) -> None:
        self.log_new_params(settings)
        for k, v in settings.items():
            self.settings.setdefault(step, {}).setdefault(k, []).append(v)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def log_artifact(self, path: Path, artifact_dir: str) -> None:
        self.artifacts.append(f"{artifact_dir}/{Path(path).name}")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.checkpoint = copy.deepcopy(state)  # the live tensors change on the next step

    def log_model(self, model: nn.Module, epoch: int | None = None) -> None:
        self.model = model
