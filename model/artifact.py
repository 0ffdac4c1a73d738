"""Versioned model artifacts: the fitted estimator plus metadata that proves what it is.

An artifact is a directory written by ``fraud train``: ``model.joblib``, ``metadata.json``,
``pr_curve.png`` and ``confusion_matrix.png``. The loader recomputes the SHA-256 of the model
file and refuses it when it differs from the metadata or when the artifact was trained on a
different feature list. The hash proves integrity, not authorship: joblib files are pickles, so
only load artifacts from a directory you control.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from model.errors import ModelLoadError
from model.features import FEATURE_NAMES
from model.metrics import Thresholds

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
ARTIFACT_FORMAT = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded, verified model."""

    estimator: Any
    metadata: dict[str, Any]
    path: Path

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def thresholds(self) -> Thresholds:
        t = self.metadata["thresholds"]
        return Thresholds(review=float(t["review"]), block=float(t["block"]))

    @property
    def reference(self) -> np.ndarray:
        """Typical feature values from training, the baseline that reasons are measured against."""
        return np.asarray(self.metadata["reference_features"], dtype=np.float64)


def save_artifact(out: Path, estimator: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write the model and its metadata; returns the metadata as written (hash and version added)."""
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    joblib.dump(estimator, model_path)
    sha = sha256_file(model_path)
    meta = {
        "artifact_format": ARTIFACT_FORMAT,
        **metadata,
        "model_file": MODEL_FILE,
        "model_sha256": sha,
        "feature_names": list(FEATURE_NAMES),
    }
    meta.setdefault("version", f"{metadata.get('created_at', '')[:10].replace('-', '')}-{sha[:12]}")
    # Write metadata last and atomically: a reader never sees metadata for a half-written model.
    tmp = out / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    tmp.replace(out / METADATA_FILE)
    return meta


def load_artifact(path: str | Path) -> ModelArtifact:
    """Load and verify an artifact directory; raises :class:`ModelLoadError` on any problem."""
    root = Path(path)
    meta_path = root / METADATA_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{meta_path} not found: is {root} a directory written by `fraud train`?") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{meta_path}: unreadable metadata: {exc}") from exc
    if meta.get("artifact_format") != ARTIFACT_FORMAT:
        raise ModelLoadError(f"{meta_path}: unsupported artifact_format {meta.get('artifact_format')!r}")
    if list(meta.get("feature_names", [])) != list(FEATURE_NAMES):
        raise ModelLoadError(f"{root}: trained on a different feature list than this version computes")
    model_path = root / str(meta.get("model_file", MODEL_FILE))
    try:
        actual = sha256_file(model_path)
    except OSError as exc:
        raise ModelLoadError(f"{model_path}: {exc}") from exc
    if actual != meta.get("model_sha256"):
        raise ModelLoadError(
            f"{model_path}: SHA-256 {actual[:16]}... does not match metadata "
            f"{str(meta.get('model_sha256'))[:16]}...; refusing to load"
        )
    try:
        estimator = joblib.load(model_path)
    except Exception as exc:  # a corrupt pickle can raise nearly anything
        raise ModelLoadError(f"{model_path}: cannot unpickle: {exc}") from exc
    if not hasattr(estimator, "predict_proba"):
        raise ModelLoadError(f"{model_path}: not a classifier with predict_proba")
    if len(meta.get("reference_features", [])) != len(FEATURE_NAMES):
        raise ModelLoadError(f"{meta_path}: reference_features missing or of the wrong length")
    return ModelArtifact(estimator=estimator, metadata=meta, path=root)
