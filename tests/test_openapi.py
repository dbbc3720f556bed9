"""The schema copy the tests validate against is whole: every reference resolves, every event is known."""

from __future__ import annotations

from tests import openapi
from tests.data.openapi.trim import ROOTS, references


def test_every_reference_in_the_trimmed_schema_resolves():
    schemas = openapi.components()["schemas"]
    missing = {ref for schema in schemas.values() for ref in references(schema)} - schemas.keys()
    assert not missing
    assert set(ROOTS) <= schemas.keys()


def test_the_event_table_knows_the_stream_events_loopway_sends():
    known = openapi.event_schemas()
    for kind in (
        "response.created",
        "response.output_text.delta",
        "response.function_call_arguments.done",
        "response.completed",
        "response.failed",
        "response.incomplete",
        "response.queued",
        "error",
    ):
        assert kind in known, kind
