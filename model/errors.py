"""The project's exception tree; each class carries the HTTP status the API answers with."""

from __future__ import annotations


class FraudStreamError(Exception):
    """Base of every error the project raises on purpose."""

    status_code = 500


class ModelLoadError(FraudStreamError):
    """A model artifact is missing, corrupt, tampered with or built for other features."""

    status_code = 503


class ModelNotReadyError(FraudStreamError):
    """No model has been loaded yet."""

    status_code = 503


class UpstreamUnavailableError(FraudStreamError):
    """A dependency (broker, worker state view) did not answer in time."""

    status_code = 503


class ConfigurationError(FraudStreamError):
    """Settings that cannot work together; the process refuses to start and says which."""
