"""The worker writes its card table's changelog itself (through librdkafka): the records must be
what Faust's own recovery decodes back into the table."""

from __future__ import annotations

from pathlib import Path

import faust
import orjson

from streaming.scoring.state import (
    CardStateCopy,
    card_changelog_topic,
    changelog_key,
    decode_state,
    merge,
    with_fraud_label,
)
from streaming.worker.app import card_table


def test_changelog_records_decode_as_fausts_own(tmp_path: Path) -> None:
    app = faust.App("changelog-test", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(tmp_path))
    table = card_table(app)
    state = merge(None, [("t1", 1_700_000_000_123, 12.34, "m-1"), ("t2", 1_700_000_000_000, 0.1, "m-2")], 0)
    state = with_fraud_label(state, "t1", "m-1", 19_675, 1_700_000_100_000)

    topic = table.changelog_topic
    key = topic.schema.loads_key(app, _Message(changelog_key("card-ä 1"), b""))
    value = topic.schema.loads_value(app, _Message(b"", orjson.dumps(state)))
    assert key == "card-ä 1"
    # Recovery restores the bytes as written, the form the worker's table holds them in.
    assert decode_state(value) == state
    # ...and the bytes are the ones Faust writes for the same entry.
    assert changelog_key("card-ä 1") == topic.prepare_key("card-ä 1", None)[0]
    # The API's copy of the table follows the topic Faust names, and reads the records back.
    assert card_changelog_topic("changelog-test") == topic.get_topic_name()
    copy = CardStateCopy()
    copy.apply(changelog_key("card-ä 1"), orjson.dumps(state))
    assert copy.get("card-ä 1") == state


class _Message:
    def __init__(self, key: bytes, value: bytes) -> None:
        self.key, self.value, self.headers = key, value, {}


def test_state_view_needs_the_shared_token() -> None:
    from pydantic import SecretStr

    from streaming.worker.app import state_view_refusal

    token = SecretStr("s3cret-token")
    assert state_view_refusal(token, "Bearer s3cret-token") is None
    for header in (None, "", "Bearer ", "Bearer s3cret-toke", "bearer s3cret-token", "s3cret-token"):
        assert "state token is required" in (state_view_refusal(token, header) or "")
    # No token configured: the view is off, whatever the caller sends.
    assert "FRAUD_STATE_TOKEN" in (state_view_refusal(None, "Bearer s3cret-token") or "")
