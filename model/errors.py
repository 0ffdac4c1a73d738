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


class UserInputError(FraudStreamError):
    """Something a person gave (a file, an option, a setting) cannot be used; the message says
    what and where. The CLI reports it in one line with exit status 2."""

    status_code = 400


class DatasetError(UserInputError):
    """A dataset file cannot be used at all (missing column, unreadable, no valid rows, strict mode)."""


class TopicNotFoundError(UserInputError):
    """A topic named in the settings does not exist on the broker (or has no partitions)."""

    status_code = 404


class DependencyMismatchError(FraudStreamError):
    """An installed library lacks an internal the project relies on (a version outside the tested range)."""


class ConfigurationError(UserInputError):
    """Settings that cannot work together; the process refuses to start and says which."""
