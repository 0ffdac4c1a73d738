"""Settings come from FRAUD_* variables; security options reach librdkafka; secrets stay secret."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from streaming.settings import ApiSettings, KafkaSettings, ProducerSettings, WorkerSettings

PASSWORD = "s3cr3t-Pa55word"  # noqa: S105 - test value


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FRAUD_"):
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    s = KafkaSettings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.confluent_config() == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}


def test_fraud_prefixed_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("FRAUD_TRANSACTIONS_TOPIC", "tx-in")
    monkeypatch.setenv("FRAUD_TOPIC_PARTITIONS", "8")
    monkeypatch.setenv("FRAUD_MODEL_DIR", "/models/current")
    monkeypatch.setenv("FRAUD_BATCH_SIZE", "64")
    monkeypatch.setenv("FRAUD_HISTORY_GRACE_SECONDS", "0")
    monkeypatch.setenv("FRAUD_STATE_TIMEOUT_SECONDS", "0.25")
    monkeypatch.setenv("FRAUD_METRICS_PORT", "0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "unprefixed:1")  # must be ignored
    w = WorkerSettings()
    assert w.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert w.transactions_topic == "tx-in"
    assert w.topic_partitions == 8
    assert w.model_dir == Path("/models/current")
    assert w.batch_size == 64
    assert w.history_grace_seconds == 0
    assert ApiSettings().state_timeout_seconds == 0.25
    assert ApiSettings().model_dir == Path("/models/current")
    assert ProducerSettings().metrics_port == 0
    assert w.confluent_config()["bootstrap.servers"] == "k1:9092,k2:9092"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FRAUD_KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("FRAUD_KAFKA_SASL_MECHANISM", "GSSAPI"),
        ("FRAUD_TOPIC_PARTITIONS", "0"),
        ("FRAUD_BATCH_SIZE", "many"),
        ("FRAUD_SESSION_TIMEOUT_SECONDS", "1"),
    ],
)
def test_invalid_environment_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError):
        WorkerSettings()


def test_sasl_ssl_passthrough(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FRAUD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_USERNAME", "scorer")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("FRAUD_KAFKA_SSL_CAFILE", str(tmp_path / "ca.pem"))
    conf = KafkaSettings().confluent_config()
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "scorer",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(tmp_path / "ca.pem"),
    }


def test_sasl_plaintext_has_no_ssl_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_USERNAME", "scorer")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_PASSWORD", PASSWORD)
    conf = KafkaSettings().confluent_config()
    assert conf["sasl.mechanism"] == "PLAIN"
    assert conf["sasl.password"] == PASSWORD
    assert not any(k.startswith("ssl.") for k in conf)


def test_mutual_tls_passthrough_without_sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("FRAUD_KAFKA_SSL_CAFILE", "/etc/kafka/ca.pem")
    monkeypatch.setenv("FRAUD_KAFKA_SSL_CERTFILE", "/etc/kafka/client.pem")
    monkeypatch.setenv("FRAUD_KAFKA_SSL_KEYFILE", "/etc/kafka/client.key")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_PASSWORD", PASSWORD)  # set but not used by SSL
    conf = KafkaSettings().confluent_config()
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SSL",
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.certificate.location": "/etc/kafka/client.pem",
        "ssl.key.location": "/etc/kafka/client.key",
    }


def test_password_never_leaks_in_repr_str_or_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_USERNAME", "scorer")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_PASSWORD", PASSWORD)
    for s in (KafkaSettings(), WorkerSettings(), ApiSettings(), ProducerSettings()):
        assert s.kafka_sasl_password is not None
        assert s.kafka_sasl_password.get_secret_value() == PASSWORD
        for text in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump()), f"{s}", f"{s!r}"):
            assert PASSWORD not in text
        assert "scorer" in repr(s)  # the repr is real, just masked


def test_faust_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faust")
    assert KafkaSettings().faust_credentials() is None
    monkeypatch.setenv("FRAUD_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_USERNAME", "scorer")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_PASSWORD", PASSWORD)
    creds = KafkaSettings().faust_credentials()
    assert type(creds).__name__ == "SASLCredentials"
    assert creds.username == "scorer" and creds.password == PASSWORD
    assert str(creds.mechanism.value) == "SCRAM-SHA-256"
    assert creds.ssl_context is None
    assert PASSWORD not in repr(creds)


def test_listeners_bind_to_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().metrics_bind == "127.0.0.1"
    assert WorkerSettings().web_bind == "127.0.0.1"
    assert ProducerSettings().metrics_bind == "127.0.0.1"
    assert ApiSettings().host == "127.0.0.1"
    monkeypatch.setenv("FRAUD_METRICS_BIND", "0.0.0.0")  # noqa: S104 - what containers set
    assert WorkerSettings().metrics_bind == ProducerSettings().metrics_bind == "0.0.0.0"  # noqa: S104


def test_state_token_is_shared_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().state_token is None and ApiSettings().state_token is None
    monkeypatch.setenv("FRAUD_STATE_TOKEN", PASSWORD)
    for s in (WorkerSettings(), ApiSettings()):
        assert s.state_token is not None and s.state_token.get_secret_value() == PASSWORD
        assert PASSWORD not in repr(s) and PASSWORD not in s.model_dump_json()


def test_librdkafka_takes_the_security_settings_and_uses_the_ca_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """librdkafka validates its configuration when a client is built: the keys are real ones, and
    a CA file that is not there fails the client, so TLS settings are used, not ignored."""
    from confluent_kafka import KafkaException, Producer

    monkeypatch.setenv("FRAUD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_USERNAME", "scorer")
    monkeypatch.setenv("FRAUD_KAFKA_SASL_PASSWORD", PASSWORD)
    Producer(KafkaSettings().confluent_config()).flush(0)  # system CA store: builds
    monkeypatch.setenv("FRAUD_KAFKA_SSL_CAFILE", str(tmp_path / "missing-ca.pem"))
    with pytest.raises(KafkaException, match="ssl.ca.location|missing-ca"):
        Producer(KafkaSettings().confluent_config())
