"""Triton's official gRPC client as a peer of sdserve's gRPC front end.

The server is tests/fixtures/grpc-echo-server.ts (compiled to dist/ by `npx tsc -p tsconfig.json`):
the real front end over a small in-process core with models `echo`, `add`, `hang` and `boom`.
"""
from __future__ import annotations

import queue
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = PROJECT_ROOT / "dist" / "tests" / "fixtures" / "grpc-echo-server.js"


@pytest.fixture(scope="module")
def client() -> Iterator[grpcclient.InferenceServerClient]:
    if not FIXTURE.exists():
        pytest.fail(f"{FIXTURE} is missing: build it with `npx tsc -p tsconfig.json`")
    process = subprocess.Popen(["node", str(FIXTURE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("GRPC_PORT="), f"fixture server did not start: {line!r}"
        with grpcclient.InferenceServerClient(url=f"127.0.0.1:{line.strip().split('=')[1]}") as triton:
            yield triton
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the fixture exits when stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fp32_input(name: str, values: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return tensor


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add")
    assert not client.is_model_ready("missing")
    assert client.get_server_metadata().name == "sdserve"
    metadata = client.get_model_metadata("add")
    assert metadata.inputs[0].name == "A"
    assert list(metadata.inputs[0].shape) == [-1, 3]


def test_infer_reads_raw_fp32_outputs(client: grpcclient.InferenceServerClient) -> None:
    a = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    b = np.array([[0.5, 0.25, -3.0]], dtype=np.float32)
    result = client.infer("add", [fp32_input("A", a), fp32_input("B", b)], request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("SUM"), a + b)
    assert result.get_response().id == "r1"


def test_infer_bytes_and_parameters_round_trip(client: grpcclient.InferenceServerClient) -> None:
    text = np.array([["a butterfly"], ["b\x00ytes"]], dtype=object)
    prompt = grpcclient.InferInput("prompt", list(text.shape), "BYTES")
    prompt.set_data_from_numpy(text)
    result = client.infer("echo", [prompt], parameters={"steps": 4, "scheduler": "euler", "tiled": True})
    assert result.as_numpy("prompt").tolist() == [[b"a butterfly"], [b"b\x00ytes"]]
    parameters = result.get_response().parameters
    assert parameters["steps"].int64_param == 4
    assert parameters["scheduler"].string_param == "euler"
    assert parameters["tiled"].bool_param is True


def test_errors_carry_the_grpc_status_and_message(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'missing'") as missing:
        client.infer("missing", [fp32_input("A", np.zeros((1, 3), dtype=np.float32))])
    assert missing.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="backend exploded") as boom:
        client.infer("boom", [fp32_input("A", np.zeros((1, 3), dtype=np.float32))])
    assert boom.value.status() == "StatusCode.INTERNAL"


def test_deadline_on_a_hanging_model_leaves_the_server_serving(client: grpcclient.InferenceServerClient) -> None:
    # The client's timer or the server's may fire first: "Deadline Exceeded" or "Deadline exceeded".
    with pytest.raises(InferenceServerException, match="(?i)deadline exceeded"):
        client.infer("hang", [fp32_input("A", np.zeros((1, 3), dtype=np.float32))], client_timeout=0.5)
    assert client.is_server_live()


def test_stream_answers_every_request_and_survives_a_bad_one(client: grpcclient.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        a = np.ones((1, 3), dtype=np.float32)
        client.async_stream_infer("echo", [fp32_input("A", a)], request_id="first")
        client.async_stream_infer("missing", [fp32_input("A", a)], request_id="bad")
        client.async_stream_infer("echo", [fp32_input("A", a * 2)], request_id="last")
        got = [answers.get(timeout=10) for _ in range(3)]
    finally:
        client.stop_stream()
    errors = [str(error) for _, error in got if error is not None]
    results = {result.get_response().id: result.as_numpy("A") for result, error in got if error is None}
    assert len(errors) == 1 and "unknown model 'missing'" in errors[0]
    np.testing.assert_array_equal(results["first"], a)
    np.testing.assert_array_equal(results["last"], a * 2)


def test_model_config_decodes_as_triton_model_config(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("echo").config
    assert config.name == "echo"
    assert config.max_batch_size == 4
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert [i.name for i in config.input] == ["A", "B"]
    assert config.input[1].data_type == grpcclient.model_config_pb2.TYPE_STRING
    assert config.input[1].format == grpcclient.model_config_pb2.ModelInput.FORMAT_NHWC
    assert list(config.input[1].reshape.shape) == [2]
    assert config.instance_group[0].kind == grpcclient.model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.default_queue_policy.timeout_action == grpcclient.model_config_pb2.ModelQueuePolicy.DELAY
    assert config.dynamic_batching.priority_queue_policy[2].max_queue_size == 3
    assert config.parameters["steps"].string_value == "20"


def test_statistics_and_repository(client: grpcclient.InferenceServerClient) -> None:
    stats = client.get_inference_statistics("add").model_stats
    assert [(s.name, s.version, s.inference_count) for s in stats] == [("add", "1", 0)]
    index = client.get_model_repository_index().models
    assert [(m.name, m.state) for m in index] == [("echo", "READY"), ("broken", "UNAVAILABLE")]
    client.load_model("add", config='{"max_batch_size": 2}')
    client.unload_model("echo")
    with pytest.raises(InferenceServerException, match="bad config"):
        client.load_model("broken")


def test_shared_memory_is_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="not supported by sdserve") as refused:
        client.get_system_shared_memory_status()
    assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
