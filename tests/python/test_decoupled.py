"""Triton's decoupled API in pb_utils: response senders, the final flag, and the config helper."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def response(value: float) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUT", np.array([value], dtype=np.float32))])


def connected_request(sent: list[tuple[pb_utils.InferenceResponse | None, int]]) -> pb_utils.InferenceRequest:
    return pb_utils.InferenceRequest([], request_id="r",
                                     response_sink=lambda _request, answer, flags: sent.append((answer, flags)))


def test_a_connected_sender_delivers_responses_then_the_final_flag_in_order() -> None:
    sent: list[tuple[pb_utils.InferenceResponse | None, int]] = []
    request = connected_request(sent)
    sender = request.get_response_sender()
    first, second = response(1.0), response(2.0)

    sender.send(first)
    sender.send(second)
    sender.send(flags=FINAL)

    assert FINAL == 1
    assert sent == [(first, 0), (second, 0), (None, FINAL)]
    assert sender.is_connected() and sender.is_final_sent()
    assert request.get_response_sender() is sender


def test_nothing_can_be_sent_after_the_final_flag() -> None:
    sender = connected_request([]).get_response_sender()
    sender.send(response(1.0), flags=FINAL)

    with pytest.raises(pb_utils.TritonModelException, match="already sent its final response"):
        sender.send(response(2.0))
    with pytest.raises(pb_utils.TritonModelException, match="already sent its final response"):
        sender.send(flags=FINAL)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"response": None, "flags": 0}, "send\\(\\) needs a response unless flags is TRITONSERVER_RESPONSE_COMPLETE_FINAL"),
        ({"response": None, "flags": 2}, "send\\(\\) flags must be 0 or TRITONSERVER_RESPONSE_COMPLETE_FINAL \\(1\\), got 2"),
        ({"response": "done", "flags": FINAL}, "send\\(\\) response must be an InferenceResponse, got str"),
    ],
)
def test_bad_sends_are_refused_and_leave_the_request_open(arguments: dict, message: str) -> None:
    sent: list[tuple[pb_utils.InferenceResponse | None, int]] = []
    sender = connected_request(sent).get_response_sender()

    with pytest.raises(pb_utils.TritonModelException, match=message):
        sender.send(**arguments)

    assert sent == [] and not sender.is_final_sent()


def test_a_sender_sees_its_request_cancelled() -> None:
    request = connected_request([])
    sender = request.get_response_sender()
    assert not sender.is_cancelled()

    request.mark_cancelled()

    assert sender.is_cancelled()


def test_a_request_made_in_process_keeps_what_its_sender_is_sent() -> None:
    sender = pb_utils.InferenceRequest([]).get_response_sender()
    answer = response(3.0)

    sender.send(answer, flags=FINAL)

    assert not sender.is_connected()
    assert sender.sent_responses() == [answer]


def test_one_final_flag_wins_when_threads_race_to_send_it() -> None:
    sent: list[tuple[pb_utils.InferenceResponse | None, int]] = []
    sender = connected_request(sent).get_response_sender()
    refused: list[Exception] = []

    def send_final() -> None:
        try:
            sender.send(response(1.0), flags=FINAL)
        except pb_utils.TritonModelException as error:
            refused.append(error)

    threads = [threading.Thread(target=send_final) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(sent) == 1 and len(refused) == 7


def test_the_config_says_whether_a_model_is_decoupled() -> None:
    assert pb_utils.using_decoupled_model_transaction_policy({"model_transaction_policy": {"decoupled": True}})
    assert pb_utils.using_decoupled_model_transaction_policy('{"model_transaction_policy": {"decoupled": "true"}}')
    assert not pb_utils.using_decoupled_model_transaction_policy({"name": "m"})
