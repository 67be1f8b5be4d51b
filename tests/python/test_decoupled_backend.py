"""Decoupled models through the real backend process: ResponseNotify frames per request, in the
order the model sends them, while the stub keeps serving other ExecuteRequests and cancels."""

from __future__ import annotations

import numpy as np

from sdserve_backend.messages import MessageType
from sdserve_backend.tensor_codec import array_from_payload
from test_ipc_backend import Backend, backend, pack  # noqa: F401 - `backend` is the shared fixture

MODEL = "decoupled_reverse"


def execute(backend: Backend, correlation_id: int, values: list[float], parameters: dict | None = None) -> None:
    requests, payload = [], []
    offset = 0
    for index, value in enumerate(values):
        metas, parts = pack({"IN": np.full(4, value, np.float32)})
        requests.append({"request_id": f"r{correlation_id}-{index}", "inputs": [{**metas[0], "offset": offset}],
                         "requested_output_names": [], "parameters": parameters or {}})
        payload += parts
        offset += sum(len(part) for part in parts)
    backend.send(MessageType.EXECUTE_REQUEST, correlation_id, {"requests": requests}, payload)


def read_responses(backend: Backend, count: int) -> list[tuple[int, int, bool, list[float] | dict | None]]:
    """The next `count` ResponseNotify frames as (correlation id, request index, final, OUT or error)."""
    seen = []
    while len(seen) < count:
        frame = backend.read()
        assert frame.type in (MessageType.RESPONSE_NOTIFY, MessageType.PROGRESS_NOTIFY), frame
        if frame.type is MessageType.PROGRESS_NOTIFY:
            continue
        response = frame.metadata.get("response")
        value: list[float] | dict | None = response
        if response is not None and "outputs" in response:
            meta = response["outputs"][0]
            value = array_from_payload(frame.payload, meta["name"], meta["datatype"], meta["shape"],
                                       meta["offset"], meta["length"]).tolist()
        seen.append((frame.correlation_id, frame.metadata["request_index"], frame.metadata["final"], value))
    return seen


def test_a_decoupled_model_answers_each_request_by_its_own_frames_and_sends_no_execute_response(backend: Backend) -> None:
    backend.read()
    assert backend.load(MODEL).metadata == {"cuda": None}

    execute(backend, 2, [1.0, 2.0, 3.0])

    assert read_responses(backend, 4) == [
        (2, 2, True, [6.0] * 4),
        (2, 1, False, [4.0] * 4),
        (2, 1, True, None),
        (2, 0, True, [2.0] * 4),
    ]
    backend.send(MessageType.HEALTH_REQUEST, 3, {})
    assert backend.read().type is MessageType.HEALTH_RESPONSE


def test_the_stub_serves_new_requests_while_a_decoupled_one_is_held_and_cancel_reaches_it(backend: Backend) -> None:
    backend.read()
    backend.load(MODEL)

    execute(backend, 4, [1.0], {"hold": True})
    execute(backend, 5, [5.0])
    assert read_responses(backend, 1) == [(5, 0, True, [10.0] * 4)]

    backend.send(MessageType.CANCEL_REQUEST, 6, {"request_ids": ["r4-0"]})
    assert read_responses(backend, 1) == [(4, 0, True, {"error": "cancelled while held", "code": "CANCELLED"})]
