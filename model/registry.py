"""MLflow tracking and model registry: training runs, versions, the champion and challenger aliases.

Every ``fraud train`` run is an MLflow run (parameters, metrics, plots, the artifact directory under
``model/``) and its artifact a new version of a registered model (``fraudstream`` unless
configured). The ``champion`` alias is what the worker and the API serve; ``challenger``, when
set, is scored in shadow. Promotions and rollbacks move ``champion`` and are recorded as runs of
their own (who, when, why), and on the version promoted (``fraud.replaced``: the version it
replaced, which a rollback returns to).

The default tracking URI is embedded: a SQLite file and an artifact folder under ``artifacts/``,
nothing to start. A server (``http://...``) works the same way through the URI. Only the light
client (``mlflow-skinny``) is needed here; it is imported when a registry is first used, so
processes serving from a plain directory never load it.

A registered version is verified like a directory: the loader checks the model file's SHA-256
against its metadata, the feature list and the reference row, and the metadata's SHA-256 must be
the one recorded on the version at registration (``fraud.model_sha256``), so an artifact changed
in the store after registration, model and metadata both, is refused.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.artifact import METADATA_FILE, ModelArtifact, load_artifact
from model.errors import ConfigurationError, ModelLoadError, UserInputError
from model.scoring import ModelHolder

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///artifacts/mlflow/mlflow.db"
DEFAULT_MODEL_NAME = "fraudstream"
EXPERIMENT = "fraudstream"
CHAMPION, CHALLENGER = "champion", "challenger"
ROLES = (CHAMPION, CHALLENGER)
#: Where a run keeps the artifact directory.
MODEL_PATH = "model"

# Tags on model versions and runs.
TAG_SHA = "fraud.model_sha256"
TAG_ARTIFACT_VERSION = "fraud.artifact_version"
TAG_REPLACED = "fraud.replaced"
TAG_KIND = "fraud.kind"


class RegistryError(UserInputError):
    """The registry cannot do what was asked (unknown version, no champion to roll back, ...)."""


class RegistryUnavailableError(ModelLoadError):
    """The tracking server or store did not answer."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as ``fraud models list`` shows it."""

    version: str
    artifact_version: str
    aliases: tuple[str, ...]
    run_id: str
    created_at: str
    tags: dict[str, str]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory), else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def actor() -> str:
    """Who is acting: ``FRAUD_ACTOR`` when set (a CI job, a scheduler), else the login name."""
    try:
        return os.environ.get("FRAUD_ACTOR") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return "unknown"


class Registry:
    """The tracking store and model registry behind ``tracking_uri``, for model ``name``."""

    def __init__(self, tracking_uri: str = DEFAULT_TRACKING_URI, name: str = DEFAULT_MODEL_NAME) -> None:
        self.tracking_uri, self.name = tracking_uri, name
        self._client: Any = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> Any:
        """An ``mlflow.MlflowClient`` (imported on first use: it takes seconds)."""
        if self._client is None:
            db = sqlite_path(self.tracking_uri)
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(EXPERIMENT)
            if found is not None:
                self._experiment_id = str(found.experiment_id)
            else:
                # Embedded: artifacts beside the database (absolute, so any working directory
                # finds them); a server picks its own artifact root.
                db = sqlite_path(self.tracking_uri)
                location = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
                self._experiment_id = str(self.client.create_experiment(EXPERIMENT, artifact_location=location))
        return self._experiment_id

    def run_url(self, run_id: str) -> str:
        """Where a person finds the run: the server's page, or the run's id in the embedded store."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id()}/runs/{run_id}"
        return f"run {run_id} in {self.tracking_uri} (view: mlflow ui --backend-store-uri {self.tracking_uri})"

    # --- training runs ------------------------------------------------------------------------

    def log_training(
        self,
        artifact_dir: Path,
        kind: str = "train",
        extra_params: dict[str, Any] | None = None,
        extra_metrics: dict[str, float] | None = None,
    ) -> tuple[str, str]:
        """Log a run for the artifact in ``artifact_dir`` (verified first) and register it as a
        new version; returns (run id, version)."""
        artifact = load_artifact(artifact_dir)
        metadata = artifact.metadata
        params = {**training_params(artifact), **(extra_params or {})}
        client = self.client
        sha = str(metadata["model_sha256"])
        tags = {TAG_KIND: kind, TAG_ARTIFACT_VERSION: str(metadata["version"]), "fraud.actor": actor()}
        run = client.create_run(self.experiment_id(), run_name=f"{kind} {metadata['version']}", tags=tags)
        run_id = run.info.run_id
        try:
            from mlflow.entities import Metric, Param

            now = int(datetime.now(UTC).timestamp() * 1000)
            metrics = {**_numeric_leaves(metadata), **(extra_metrics or {})}
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics.items())],
                params=[Param(k, _param(v)) for k, v in sorted(params.items())],
            )
            client.log_text(run_id, json.dumps(metadata.get("feature_names", []), indent=1), "features.json")
            client.log_artifacts(run_id, str(artifact_dir), MODEL_PATH)
        except Exception:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id)
        self._ensure_registered_model()
        source = f"{run.info.artifact_uri}/{MODEL_PATH}"
        mv = client.create_model_version(self.name, source=source, run_id=run_id, tags={**tags, TAG_SHA: sha})
        log.info("registered %s version %s (artifact %s)", self.name, mv.version, metadata["version"])
        return run_id, str(mv.version)

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name, description="fraudstream models (fraud train)")

    # --- versions and aliases -----------------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        """Every version, newest first, with its aliases."""
        from mlflow.exceptions import MlflowException

        try:
            aliases = self.client.get_registered_model(self.name).aliases
        except MlflowException:
            return []
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        found = self.client.search_model_versions(f"name='{self.name}'")
        out = [
            VersionInfo(
                version=str(mv.version),
                artifact_version=mv.tags.get(TAG_ARTIFACT_VERSION, "?"),
                aliases=tuple(sorted(by_version.get(str(mv.version), []))),
                run_id=mv.run_id or "",
                created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                tags=dict(mv.tags),
            )
            for mv in found
        ]
        return sorted(out, key=lambda v: int(v.version), reverse=True)

    def alias(self, alias: str) -> Any | None:
        """The ``ModelVersion`` behind ``alias``, or None when the alias is not set.

        Raises :class:`RegistryUnavailableError` when the store does not answer."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as exc:
            if exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
                return None
            raise RegistryUnavailableError(f"{self.tracking_uri}: {exc}") from exc
        except Exception as exc:  # connection errors of the REST client, a locked or missing database
            raise RegistryUnavailableError(f"{self.tracking_uri}: {exc}") from exc

    def _version(self, version: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"{self.name} has no version {version}") from exc

    def promote(self, version: str, reason: str, who: str | None = None, kind: str = "promote") -> dict[str, Any]:
        """Make ``version`` the champion; the version it replaces is kept on it for a rollback."""
        mv = self._version(version)
        current = self.alias(CHAMPION)
        previous = str(current.version) if current is not None else None
        if previous == str(mv.version):
            raise RegistryError(f"version {mv.version} is already the champion")
        client = self.client
        if previous is not None:
            client.set_model_version_tag(self.name, mv.version, TAG_REPLACED, previous)
        client.set_registered_model_alias(self.name, CHAMPION, mv.version)
        challenger = self.alias(CHALLENGER)
        if challenger is not None and str(challenger.version) == str(mv.version):
            client.delete_registered_model_alias(self.name, CHALLENGER)
        return self._record(kind, str(mv.version), previous, reason, who)

    def rollback(self, reason: str, who: str | None = None) -> dict[str, Any]:
        """Champion back to the version the current champion replaced."""
        current = self.alias(CHAMPION)
        if current is None:
            raise RegistryError(f"{self.name} has no champion to roll back")
        previous = current.tags.get(TAG_REPLACED)
        if not previous:
            raise RegistryError(f"champion version {current.version} replaced no earlier version")
        self._version(previous)
        self.client.set_registered_model_alias(self.name, CHAMPION, previous)
        return self._record("rollback", previous, str(current.version), reason, who)

    def set_challenger(self, version: str | None, reason: str, who: str | None = None) -> dict[str, Any]:
        """Set the challenger alias (None clears it)."""
        current = self.alias(CHALLENGER)
        before = str(current.version) if current is not None else None
        if version is None:
            if current is not None:
                self.client.delete_registered_model_alias(self.name, CHALLENGER)
            return self._record("clear-challenger", None, before, reason, who)
        mv = self._version(version)
        self.client.set_registered_model_alias(self.name, CHALLENGER, mv.version)
        return self._record("challenge", str(mv.version), before, reason, who)

    def _record(self, action: str, to: str | None, before: str | None, reason: str, who: str | None) -> dict[str, Any]:
        """An alias change as a run of its own: who, when, why, from which version to which."""
        who = who or actor()
        when = datetime.now(UTC).isoformat(timespec="seconds")
        record = {"action": action, "version": to, "previous": before, "actor": who, "reason": reason, "at": when}
        tags = {TAG_KIND: action, "fraud.actor": who, "fraud.reason": reason, "mlflow.note.content": reason}
        run = self.client.create_run(self.experiment_id(), run_name=f"{action} {to or '-'}", tags=tags)
        for key in ("version", "previous"):
            self.client.log_param(run.info.run_id, key, record[key] or "-")
        self.client.set_terminated(run.info.run_id)
        if to is not None:
            self.client.set_model_version_tag(self.name, to, f"fraud.{action}d_at", when)
            self.client.set_model_version_tag(self.name, to, f"fraud.{action}d_by", who)
        log.info("%s: %s -> %s by %s: %s", action, before, to, who, reason)
        return {**record, "run_id": run.info.run_id}

    # --- retraining ---------------------------------------------------------------------------

    def record_failure(self, kind: str, error: str) -> str:
        """A failed run of ``kind`` (say, a retraining that could not finish), for the record and
        the retraining metrics; returns its run id."""
        tags = {TAG_KIND: kind, "fraud.actor": actor(), "fraud.error": error[:5000], "mlflow.note.content": error}
        run = self.client.create_run(self.experiment_id(), run_name=f"{kind} failed", tags=tags)
        self.client.set_terminated(run.info.run_id, status="FAILED")
        return str(run.info.run_id)

    def retrain_status(self) -> dict[str, Any]:
        """The newest retraining run and the newest successful one: their end times (ms, 0 when
        none), the newest run's outcome (``promote``, ``challenger`` or ``failed``) and the
        average precisions the newest successful one compared."""

        def newest(extra: str) -> Any:
            found = self.client.search_runs(
                [self.experiment_id()],
                filter_string=f"tags.`{TAG_KIND}` = 'retrain'{extra}",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            return found[0] if found else None

        last, success = newest(""), newest(" and attributes.status = 'FINISHED'")
        status: dict[str, Any] = {"last_run_ms": 0, "last_success_ms": 0, "outcome": None, "average_precision": {}}
        if last is not None:
            status["last_run_ms"] = last.info.end_time or last.info.start_time
            status["outcome"] = "failed" if last.info.status == "FAILED" else last.data.tags.get("fraud.gate.verdict")
        if success is not None:
            status["last_success_ms"] = success.info.end_time or success.info.start_time
            for role in ("candidate", "champion"):
                value = success.data.metrics.get(f"gate.{role}.average_precision")
                if value is not None:
                    status["average_precision"][role] = value
        return status

    # --- loading ------------------------------------------------------------------------------

    def load(self, mv: Any) -> ModelArtifact:
        """Download a registered version and verify it (see the module docstring)."""
        import mlflow.artifacts

        with tempfile.TemporaryDirectory(prefix="fraud-model-") as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=mv.source, dst_path=tmp, tracking_uri=self.tracking_uri
                )
            except Exception as exc:  # missing files, unreachable store
                raise ModelLoadError(f"{self.name} version {mv.version}: cannot download {mv.source}: {exc}") from exc
            try:
                artifact = load_artifact(path)
            except ModelLoadError as exc:
                raise ModelLoadError(f"{self.name} version {mv.version}: {exc}") from exc
            recorded = mv.tags.get(TAG_SHA)
            if recorded != artifact.metadata.get("model_sha256"):
                raise ModelLoadError(
                    f"{self.name} version {mv.version}: {METADATA_FILE} names model SHA-256 "
                    f"{str(artifact.metadata.get('model_sha256'))[:16]}..., registered as {str(recorded)[:16]}...; "
                    "refusing to load"
                )
        return artifact


def training_params(artifact: ModelArtifact) -> dict[str, Any]:
    """What a training run is logged with: its window, estimator and hyperparameters, label
    delay, thresholds and data fingerprint, from the artifact itself."""
    meta = artifact.metadata
    hyper = {
        f"estimator.{k}": v
        for k, v in artifact.estimator.get_params(deep=True).items()
        if v is None or isinstance(v, str | int | float | bool)
    }
    fingerprint = meta.get("data_fingerprint", {})
    window = {
        f"window.{k}": v for k, v in meta.get("training_window", {}).items() if not k.endswith(("_rows", "_fraud"))
    }
    return {
        "model_type": meta.get("model_type"),
        "estimator": type(artifact.estimator).__name__,
        **hyper,
        **window,
        "label_delay_days": meta.get("label_delay_days"),
        "seed": meta.get("seed"),
        "disabled_features": meta.get("disabled_features", []),
        "threshold_targets": {k: v for k, v in meta.get("threshold_targets", {}).items() if k != "notes"},
        "thresholds": meta.get("thresholds"),
        "data.file": fingerprint.get("file"),
        "data.sha256": fingerprint.get("sha256"),
        "data.rows": fingerprint.get("rows"),
        "artifact_version": meta.get("version"),
        "model_sha256": meta.get("model_sha256"),
    }


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text[:6000]  # MLflow's parameter value limit


def _numeric_leaves(metadata: dict[str, Any]) -> dict[str, float]:
    """Every number under a ``*_metrics`` key of the metadata (validation, evaluation), dotted."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix] = float(value)

    for key, value in metadata.items():
        if key.endswith("_metrics"):
            walk(key.removesuffix("_metrics"), value)
    for key, value in metadata.get("training_window", {}).items():
        if key.endswith(("_rows", "_fraud")):
            walk(f"window.{key}", value)
    return out


class RegistrySource:
    """A model source that follows a registry alias: what :class:`model.scoring.ModelHolder` polls."""

    def __init__(self, registry: Registry, alias: str) -> None:
        self.registry, self.alias = registry, alias
        self._mv: Any = None

    @property
    def where(self) -> str:
        return f"models:/{self.registry.name}@{self.alias} ({self.registry.tracking_uri})"

    def stamp(self) -> str | None:
        """The version behind the alias (None: not set). One query; raises
        :class:`RegistryUnavailableError` when the store does not answer."""
        self._mv = self.registry.alias(self.alias)
        return None if self._mv is None else str(self._mv.version)

    def load(self) -> ModelArtifact:
        if self._mv is None:
            raise ModelLoadError(f"{self.where}: alias not set")
        return self.registry.load(self._mv)


def parse_model_uri(uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` -> (name, alias)."""
    prefix = "models:/"
    body = uri[len(prefix) :] if uri.startswith(prefix) else ""
    name, sep, alias = body.partition("@")
    if not (name and sep and alias) or "/" in name:
        raise ConfigurationError(f"model URI {uri!r}: expected models:/NAME@ALIAS, e.g. models:/fraudstream@champion")
    return name, alias


def model_holders(
    model_dir: str | Path, model_uri: str, tracking_uri: str, shadow: bool = False
) -> tuple[ModelHolder, ModelHolder | None]:
    """The serving holder and, with ``shadow``, the challenger's: a registry alias when
    ``model_uri`` is set (``models:/NAME@ALIAS``; the challenger is NAME's ``challenger``),
    otherwise ``model_dir`` (no challenger)."""
    if not model_uri:
        return ModelHolder(model_dir), None
    name, alias = parse_model_uri(model_uri)
    registry = Registry(tracking_uri, name)
    champion = ModelHolder(RegistrySource(registry, alias))
    if not shadow or alias == CHALLENGER:
        return champion, None
    return champion, ModelHolder(RegistrySource(registry, CHALLENGER), optional=True)
