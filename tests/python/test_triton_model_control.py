"""Explicit model control through Triton's repository API, driven by the official HTTP and gRPC clients."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from sdserve_server import FIXTURE_REPOSITORY, PROJECT_ROOT, ServerAddresses, make_repository, serving

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
INVALID_ARG = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}
NOT_FOUND = {"http": "404", "grpc": "StatusCode.NOT_FOUND"}
UNAVAILABLE = {"http": "503", "grpc": "StatusCode.UNAVAILABLE"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    repository = make_repository(tmp_path_factory.mktemp("control") / "repo", {
        "tiny_sd": PROJECT_ROOT / "model_repository" / "tiny_sd",
        "add_sub": FIXTURE_REPOSITORY / "add_sub",
        "initialize_fails": FIXTURE_REPOSITORY / "initialize_fails",
    })
    with serving(repository, "--model-control-mode", "explicit", "--load-model", "tiny_sd") as addresses:
        yield addresses


@pytest.fixture(params=list(PROTOCOLS))
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(server: ServerAddresses, protocol: str) -> Iterator[Any]:
    client = PROTOCOLS[protocol].InferenceServerClient(url=getattr(server, protocol))
    yield client
    client.close()


def add_sub_inputs(protocol: str) -> list[Any]:
    module = PROTOCOLS[protocol]
    inputs = []
    for name, value in (("INPUT0", 3.0), ("INPUT1", 1.0)):
        infer_input = module.InferInput(name, [4], "FP32")
        infer_input.set_data_from_numpy(np.full(4, value, dtype=np.float32))
        inputs.append(infer_input)
    return inputs


def index(client: Any, protocol: str) -> dict[str, str]:
    """{model name: state} of the repository index."""
    if protocol == "http":
        return {row["name"]: row.get("state", "") for row in client.get_model_repository_index()}
    answer = client.get_model_repository_index(as_json=True)
    return {row["name"]: row.get("state", "") for row in answer.get("models", [])}


def test_only_the_named_model_is_loaded_at_start(client: Any, protocol: str) -> None:
    assert client.is_model_ready("tiny_sd")
    assert not client.is_model_ready("add_sub")
    assert index(client, protocol)["tiny_sd"] == "READY"
    assert "add_sub" in index(client, protocol)


def test_load_infer_unload_makes_the_model_unknown_again(client: Any, protocol: str) -> None:
    client.load_model("add_sub")
    assert client.is_model_ready("add_sub")
    result = client.infer("add_sub", add_sub_inputs(protocol))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full(4, 4.0, dtype=np.float32))

    client.unload_model("add_sub")
    assert not client.is_model_ready("add_sub")
    assert index(client, protocol)["add_sub"] != "READY"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("add_sub", add_sub_inputs(protocol))
    assert caught.value.status() == INVALID_ARG[protocol]
    assert "Request for unknown model: 'add_sub' is not found" in caught.value.message()
    assert client.is_model_ready("tiny_sd")


def test_a_version_that_failed_to_load_is_not_ready(client: Any, protocol: str) -> None:
    with pytest.raises(InferenceServerException):
        client.load_model("initialize_fails")
    assert not client.is_model_ready("initialize_fails")
    with pytest.raises(InferenceServerException) as latest:
        client.infer("initialize_fails", add_sub_inputs(protocol))
    assert latest.value.status() == NOT_FOUND[protocol]
    assert "Request for unknown model: 'initialize_fails' has no available versions" in latest.value.message()
    with pytest.raises(InferenceServerException) as pinned:
        client.infer("initialize_fails", add_sub_inputs(protocol), model_version="1")
    assert pinned.value.status() == UNAVAILABLE[protocol]
    assert "Request for unknown model: 'initialize_fails' version 1 is not at ready state" in pinned.value.message()
