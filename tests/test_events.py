"""Event payloads: ``data()`` is a fresh plain copy, equal to ``dataclasses.asdict`` (differential)."""
from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.events import Executed, ExecutionCached, ExecutionError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    | st.tuples(inner, inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=4), st.lists(st.text(max_size=6), max_size=4),
       json_values)
def test_data_equals_asdict_and_shares_no_container(inputs: dict, nodes: list, output) -> None:
    for event in (ExecutionError("p", node_id="3", current_inputs=inputs, traceback=list(nodes)),
                  ExecutionCached("p", nodes=nodes),
                  Executed("p", node="9", output={"value": output})):
        data = event.data()
        assert data == dataclasses.asdict(event)
        # mutating the payload (the web layer adds fields, history stores it) never touches the event
        for key, value in data.items():
            if isinstance(value, (list, dict)):
                assert value is not getattr(event, key)
