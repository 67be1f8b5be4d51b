"""Triton's official HTTP and gRPC clients as peers of a real sdserve: the same calls, both protocols."""
from __future__ import annotations

import queue
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from sdserve_server import ServerAddresses, serve_tiny_sd_and_add_sub

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
# The status each client reports for Triton's error codes (tritonserver's HTTP and gRPC mappings).
STATUS = {
    "http": {"INVALID_ARG": "400", "NOT_FOUND": "404", "UNAVAILABLE": "503"},
    "grpc": {"INVALID_ARG": "StatusCode.INVALID_ARGUMENT", "NOT_FOUND": "StatusCode.NOT_FOUND",
             "UNAVAILABLE": "StatusCode.UNAVAILABLE"},
}
FAST = {"steps": 1, "seed": 7}
# HTTP sends tensors as JSON or binary data; gRPC always as raw bytes.
WIRE_FORMATS = [("http", True), ("http", False), ("grpc", True)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    yield from serve_tiny_sd_and_add_sub(tmp_path_factory, "clients")


@pytest.fixture(params=list(PROTOCOLS))
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def module(protocol: str) -> ModuleType:
    return PROTOCOLS[protocol]


@pytest.fixture
def client(server: ServerAddresses, protocol: str) -> Iterator[Any]:
    client = PROTOCOLS[protocol].InferenceServerClient(url=getattr(server, protocol))
    yield client
    client.close()


def tensor(module: ModuleType, name: str, array: np.ndarray, datatype: str | None = None, binary: bool = True) -> Any:
    infer_input = module.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    if module is httpclient:
        infer_input.set_data_from_numpy(array, binary_data=binary)
    else:
        infer_input.set_data_from_numpy(array)
    return infer_input


def add_sub_inputs(module: ModuleType, a: np.ndarray, b: np.ndarray, binary: bool = True) -> list[Any]:
    return [tensor(module, "INPUT0", a, binary=binary), tensor(module, "INPUT1", b, binary=binary)]


def prompts(module: ModuleType, texts: list[str], binary: bool = True) -> Any:
    return tensor(module, "prompt", np.array(texts, dtype=object).reshape(-1, 1), binary=binary)


def test_health_answers_for_the_server_and_each_model(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny_sd")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("missing")
    assert not client.is_model_ready("add_sub", "2")


def test_server_metadata_names_sdserve(client: Any, protocol: str) -> None:
    metadata = client.get_server_metadata() if protocol == "http" else client.get_server_metadata(as_json=True)
    assert metadata["name"] == "sdserve"
    assert metadata["version"]


def test_model_metadata_gives_triton_datatypes_and_batch_dims(client: Any, protocol: str) -> None:
    kwargs = {} if protocol == "http" else {"as_json": True}
    tiny = client.get_model_metadata("tiny_sd", **kwargs)
    assert {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in tiny["inputs"]} == {
        "prompt": ("BYTES", [-1, 1]), "negative_prompt": ("BYTES", [-1, 1]),
        "image": ("UINT8", [-1, -1, -1, -1]), "mask": ("UINT8", [-1, -1, -1, -1])}
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in tiny["outputs"]] == [
        ("generated_image", "UINT8", [-1, -1, -1, -1]), ("generated_image_encoded", "BYTES", [-1, 1])]
    add_sub = client.get_model_metadata("add_sub", "1", **kwargs)
    assert add_sub["versions"] == ["1"]
    assert [(t["datatype"], [int(d) for d in t["shape"]]) for t in add_sub["inputs"]] == [("FP32", [4]), ("FP32", [4])]


def test_model_config_is_the_repository_config(client: Any, protocol: str) -> None:
    config = client.get_model_config("tiny_sd") if protocol == "http" else client.get_model_config("tiny_sd", as_json=True)["config"]
    assert config["name"] == "tiny_sd"
    assert config["max_batch_size"] == 4
    assert config["backend"] == "diffusion"
    assert [i["name"] for i in config["input"]] == ["prompt", "negative_prompt", "image", "mask"]


@pytest.mark.parametrize(("protocol", "binary"), WIRE_FORMATS)
def test_fp32_infer_computes_add_sub(client: Any, module: ModuleType, protocol: str, binary: bool) -> None:
    a = np.array([1.5, 2.0, -3.0, 4.25], dtype=np.float32)
    b = np.array([0.5, 1.0, 1.0, 0.25], dtype=np.float32)
    outputs = [module.InferRequestedOutput(name, **({"binary_data": binary} if protocol == "http" else {}))
               for name in ("OUTPUT0", "OUTPUT1")]
    result = client.infer("add_sub", add_sub_inputs(module, a, b, binary), outputs=outputs, request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response(**({} if protocol == "http" else {"as_json": True}))["id"] == "r-1"


@pytest.mark.parametrize(("protocol", "binary"), WIRE_FORMATS)
def test_bytes_prompts_in_uint8_images_out(client: Any, module: ModuleType, protocol: str, binary: bool) -> None:
    output = module.InferRequestedOutput("generated_image", **({"binary_data": binary} if protocol == "http" else {}))
    result = client.infer("tiny_sd", [prompts(module, ["a red fox", "a blue bird"], binary)], outputs=[output],
                          parameters=FAST)
    images = result.as_numpy("generated_image")
    assert images.dtype == np.uint8
    assert images.shape == (2, 128, 128, 3)
    assert images.std() > 0


def test_async_infer_delivers_the_result(client: Any, module: ModuleType, protocol: str) -> None:
    a = np.arange(4, dtype=np.float32)
    b = np.full(4, 2.0, dtype=np.float32)
    if protocol == "http":
        result = client.async_infer("add_sub", add_sub_inputs(module, a, b)).get_result(timeout=60)
    else:
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.async_infer("add_sub", add_sub_inputs(module, a, b), callback=lambda result, error: answers.put((result, error)))
        result, error = answers.get(timeout=60)
        assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def add_sub_statistics(client: Any, protocol: str) -> dict[str, Any]:
    answer = client.get_inference_statistics("add_sub", "1") if protocol == "http" \
        else client.get_inference_statistics("add_sub", "1", as_json=True)
    (stats,) = answer["model_stats"]
    return stats


def count(stats: dict[str, Any], *path: str) -> int:
    """A statistic by its path; the gRPC client's JSON writes 64-bit integers as strings and leaves out zeros."""
    value: Any = stats
    for key in path:
        value = value.get(key, 0) if isinstance(value, dict) else 0
    return int(value)


def test_statistics_count_the_requests_sent(client: Any, module: ModuleType, protocol: str) -> None:
    before = add_sub_statistics(client, protocol)
    ones = np.ones(4, dtype=np.float32)
    for _ in range(3):
        client.infer("add_sub", add_sub_inputs(module, ones, ones))
    after = add_sub_statistics(client, protocol)
    assert (after["name"], after["version"]) == ("add_sub", "1")
    assert count(after, "inference_stats", "success", "count") - count(before, "inference_stats", "success", "count") == 3
    assert count(after, "inference_count") - count(before, "inference_count") == 3
    assert count(after, "execution_count") - count(before, "execution_count") == 3
    assert count(after, "inference_stats", "success", "ns") > count(before, "inference_stats", "success", "ns")
    assert int(after["last_inference"]) > 0


def expect_error(call: Any, protocol: str, code: str, message: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == STATUS[protocol][code]
    assert message in caught.value.message()


def test_unknown_model_is_invalid_argument(client: Any, module: ModuleType, protocol: str) -> None:
    ones = np.ones(4, dtype=np.float32)
    expect_error(lambda: client.infer("missing", add_sub_inputs(module, ones, ones)), protocol,
                 "INVALID_ARG", "Request for unknown model: 'missing' is not found")
    expect_error(lambda: client.get_model_metadata("missing"), protocol,
                 "INVALID_ARG", "Request for unknown model: 'missing' is not found")


def test_unknown_version_is_not_found(client: Any, module: ModuleType, protocol: str) -> None:
    ones = np.ones(4, dtype=np.float32)
    expect_error(lambda: client.infer("add_sub", add_sub_inputs(module, ones, ones), model_version="2"), protocol,
                 "NOT_FOUND", "Request for unknown model: 'add_sub' version 2 is not found")


def test_unknown_input_is_invalid_argument(client: Any, module: ModuleType, protocol: str) -> None:
    ones = np.ones(4, dtype=np.float32)
    inputs = [*add_sub_inputs(module, ones, ones), tensor(module, "INPUT2", ones)]
    expect_error(lambda: client.infer("add_sub", inputs), protocol,
                 "INVALID_ARG", "unexpected inference input 'INPUT2' for model 'add_sub'")


def test_wrong_datatype_is_invalid_argument(client: Any, module: ModuleType, protocol: str) -> None:
    inputs = [tensor(module, "INPUT0", np.ones(4, dtype=np.int32)), tensor(module, "INPUT1", np.ones(4, dtype=np.float32))]
    expect_error(lambda: client.infer("add_sub", inputs, request_id="dt"), protocol, "INVALID_ARG",
                 "[request id: dt] inference input 'INPUT0' data-type is 'INT32', but model 'add_sub' expects 'FP32'")


def test_wrong_shape_is_invalid_argument(client: Any, module: ModuleType, protocol: str) -> None:
    inputs = add_sub_inputs(module, np.ones(5, dtype=np.float32), np.ones(5, dtype=np.float32))
    expect_error(lambda: client.infer("add_sub", inputs), protocol, "INVALID_ARG",
                 "[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [4], got [5]")


def test_missing_required_input_is_invalid_argument(client: Any, module: ModuleType, protocol: str) -> None:
    inputs = [tensor(module, "INPUT0", np.ones(4, dtype=np.float32))]
    expect_error(lambda: client.infer("add_sub", inputs), protocol, "INVALID_ARG",
                 "expected 2 inputs but got 1 inputs for model 'add_sub'. Got input(s) ['INPUT0'], "
                 "but missing required input(s) ['INPUT1']. Please provide all required input(s).")
    expect_error(lambda: client.infer("tiny_sd", [tensor(module, "negative_prompt", np.array([["x"]], dtype=object))]),
                 protocol, "INVALID_ARG", "expected number of inputs between 1 and 4 but got 1 inputs for model 'tiny_sd'")


def test_batch_larger_than_max_batch_size_is_invalid_argument(client: Any, module: ModuleType, protocol: str) -> None:
    expect_error(lambda: client.infer("tiny_sd", [prompts(module, ["p"] * 5)], parameters=FAST), protocol,
                 "INVALID_ARG", "inference request batch-size must be <= 4 for 'tiny_sd'")
