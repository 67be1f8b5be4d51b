"""A decoupled Triton Python model (tests/fixtures/model_repository/repeat) served by a real
sdserve and used through Triton's official clients as a Triton user would: every response of a
request reaches the client as it is sent, over gRPC's ModelStreamInfer and HTTP's
generate_stream; the endpoints that answer with one response refuse it as Triton does."""
from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from sdserve_server import FIXTURE_REPOSITORY, ServerAddresses, make_repository, serving

STREAM_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    repository = make_repository(tmp_path_factory.mktemp("decoupled") / "repo", {
        "repeat": FIXTURE_REPOSITORY / "repeat",
        "add_sub": FIXTURE_REPOSITORY / "add_sub",
    })
    with serving(repository) as addresses:
        yield addresses


@pytest.fixture
def grpc_client(server: ServerAddresses) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(url=server.grpc)
    yield client
    client.close()


def repeat_inputs(module: Any, values: list[int], delays_ms: list[int] | None = None) -> list[Any]:
    arrays = {"IN": np.array(values, np.int32), "DELAY": np.array(delays_ms if delays_ms is not None else [0] * len(values), np.uint32)}
    inputs = []
    for name, array in arrays.items():
        infer_input = module.InferInput(name, list(array.shape), "INT32" if name == "IN" else "UINT32")
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


class Stream:
    """One gRPC stream: what its callback received, with the time each came."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.received: queue.Queue[tuple[float, Any, InferenceServerException | None]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.received.put((time.monotonic(), result, error)))

    def take(self, count: int) -> list[tuple[float, Any, InferenceServerException | None]]:
        return [self.received.get(timeout=STREAM_TIMEOUT_S) for _ in range(count)]


def final_flag(result: Any) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def test_each_response_of_a_decoupled_model_streams_to_the_grpc_client_as_it_is_sent(grpc_client: grpcclient.InferenceServerClient) -> None:
    stream = Stream(grpc_client)
    # The last element comes 1.5 s after the others: they must not wait for it.
    grpc_client.async_stream_infer("repeat", repeat_inputs(grpcclient, [4, 2, 9], [0, 0, 1500]), request_id="r1")

    received = stream.take(3)
    grpc_client.stop_stream()

    assert [error for _, _, error in received] == [None, None, None]
    results = [result for _, result, _ in received]
    assert [int(result.as_numpy("OUT")[0]) for result in results] == [4, 2, 9]
    assert [int(result.as_numpy("IDX")[0]) for result in results] == [0, 1, 2]
    assert [result.get_response().id for result in results] == ["r1", "r1", "r1"]
    # The final flag came alone, after the last response: no response says it is the last one.
    assert [final_flag(result) for result in results] == [False, False, False]
    times = [at for at, _, _ in received]
    assert times[2] - times[1] > 1.0, f"the first responses waited for the last one: {times}"


def test_a_client_that_asks_for_empty_final_responses_gets_the_final_flag(grpc_client: grpcclient.InferenceServerClient) -> None:
    stream = Stream(grpc_client)
    grpc_client.async_stream_infer("repeat", repeat_inputs(grpcclient, [5, 6]), request_id="with-final",
                                   enable_empty_final_response=True)
    grpc_client.async_stream_infer("repeat", repeat_inputs(grpcclient, []), request_id="only-final",
                                   enable_empty_final_response=True)

    received = [result for _, result, error in stream.take(4) if error is None]
    grpc_client.stop_stream()

    assert len(received) == 4
    by_id: dict[str, list[Any]] = {}
    for result in received:
        by_id.setdefault(result.get_response().id, []).append(result)
    assert [final_flag(result) for result in by_id["with-final"]] == [False, False, True]
    assert [int(result.as_numpy("OUT")[0]) for result in by_id["with-final"][:2]] == [5, 6]
    empty = by_id["only-final"]
    assert len(empty) == 1 and final_flag(empty[0])
    assert empty[0].get_response().outputs == [] and empty[0].get_response().model_name == "repeat"


def test_an_error_response_names_its_request_and_the_stream_goes_on(grpc_client: grpcclient.InferenceServerClient) -> None:
    stream = Stream(grpc_client)
    grpc_client.async_stream_infer("repeat", repeat_inputs(grpcclient, [1, -3, 2]), request_id="mixed")

    received = stream.take(3)
    grpc_client.stop_stream()

    assert received[0][2] is None and int(received[0][1].as_numpy("OUT")[0]) == 1
    assert received[1][1] is None and "element 1 is negative (-3)" in str(received[1][2])
    assert received[2][2] is None and int(received[2][1].as_numpy("OUT")[0]) == 2


def test_a_normal_model_on_the_stream_answers_once_marked_final(grpc_client: grpcclient.InferenceServerClient) -> None:
    stream = Stream(grpc_client)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        infer_input = grpcclient.InferInput(name, [4], "FP32")
        infer_input.set_data_from_numpy(np.ones(4, np.float32))
        inputs.append(infer_input)
    grpc_client.async_stream_infer("add_sub", inputs, request_id="plain", enable_empty_final_response=True)

    [(_, result, error)] = stream.take(1)
    grpc_client.stop_stream()

    assert error is None and final_flag(result)
    assert result.as_numpy("OUTPUT0").tolist() == [2.0] * 4


def test_cancelling_the_stream_stops_the_model_and_the_server_serves_on(grpc_client: grpcclient.InferenceServerClient,
                                                                         server: ServerAddresses) -> None:
    stream = Stream(grpc_client)
    grpc_client.async_stream_infer("repeat", repeat_inputs(grpcclient, [1, 2, 3], [0, 3000, 3000]), request_id="long")
    stream.take(1)
    grpc_client.stop_stream(cancel_requests=True)

    again = Stream(grpc_client)
    grpc_client.async_stream_infer("repeat", repeat_inputs(grpcclient, [8]), request_id="after")
    [(_, result, error)] = again.take(1)
    grpc_client.stop_stream()
    assert error is None and int(result.as_numpy("OUT")[0]) == 8


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unary_infer_of_a_decoupled_model_is_refused_as_triton_refuses_it(server: ServerAddresses, protocol: str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(url=getattr(server, protocol))
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("repeat", repeat_inputs(module, [1]))
    finally:
        client.close()
    endpoint = "HTTP end point" if protocol == "http" else "ModelInfer RPC"
    assert f"{endpoint} doesn't support models with decoupled transaction policy" in refused.value.message()
    assert refused.value.status() == ("400" if protocol == "http" else "StatusCode.UNIMPLEMENTED")


def sse_events(response: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix("data: ")) for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]


def test_generate_stream_sends_each_response_as_an_event(server: ServerAddresses) -> None:
    url = f"http://{server.http}/v2/models/repeat/generate_stream"
    with requests.post(url, json={"IN": [3, -1, 5], "DELAY": [0, 0, 0], "id": "s1"}, stream=True, timeout=STREAM_TIMEOUT_S) as response:
        assert response.status_code == 200
        events = sse_events(response)

    assert events == [
        {"model_name": "repeat", "model_version": "1", "id": "s1", "OUT": [3], "IDX": [0]},
        {"error": "element 1 is negative (-1)"},
        {"model_name": "repeat", "model_version": "1", "id": "s1", "OUT": [5], "IDX": [2]},
    ]


def test_generate_takes_a_decoupled_model_that_answers_once_and_refuses_more(server: ServerAddresses) -> None:
    url = f"http://{server.http}/v2/models/repeat/generate"
    one = requests.post(url, json={"IN": [7]}, timeout=STREAM_TIMEOUT_S)
    assert one.status_code == 200 and one.json()["OUT"] == [7]

    two = requests.post(url, json={"IN": [7, 8]}, timeout=STREAM_TIMEOUT_S)
    assert two.status_code == 400
    assert "sent 2 responses" in two.json()["error"] and "generate_stream" in two.json()["error"]
