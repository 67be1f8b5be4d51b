"""The backend process end to end: a real `python -m sdserve_backend` talking to a socket this
test listens on, playing the core's part of the protocol."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bad_config_values import BAD_CONFIG_VALUES
from sdserve_backend.ipc import Frame, FrameReader, encode_frame
from sdserve_backend.messages import MessageType
from sdserve_backend.tensor_codec import array_from_payload, padding_after

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "tests" / "fixtures" / "model_repository"
DIFFUSION_MODEL = ROOT / "python" / "sdserve_backend" / "backends" / "diffusion" / "model.py"
TIMEOUT_S = 60


@dataclass
class Backend:
    process: subprocess.Popen[bytes]
    sock: socket.socket
    reader: FrameReader
    log_path: Path

    def send(self, message_type: MessageType, correlation_id: int, metadata: dict, payload: list | None = None) -> None:
        for buffer in encode_frame(message_type, correlation_id, metadata, payload or []):
            self.sock.sendall(buffer)

    def read(self) -> Frame:
        frame = self.reader.read()
        assert frame is not None, "the backend closed the connection"
        return frame

    def load(self, model: str) -> Frame:
        config = {"name": model, "parameters": {}, "output": [
            {"name": "OUTPUT0", "data_type": "TYPE_FP32"}, {"name": "OUTPUT1", "data_type": "TYPE_FP32"}]}
        return self.load_file(REPOSITORY / model / "1" / "model.py", REPOSITORY / model, config)

    def load_file(self, model_file: Path, repository: Path, config: dict) -> Frame:
        name = config["name"]
        args = {"model_config": json.dumps(config), "model_repository": str(repository),
                "model_version": "1", "model_name": name, "model_instance_kind": "CPU",
                "model_instance_name": f"{name}_0", "model_instance_device_id": "0"}
        self.send(MessageType.LOAD_REQUEST, 1, {"model_file": str(model_file), "args": args})
        return self.read()

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def backend() -> Iterator[Backend]:
    with tempfile.TemporaryDirectory(prefix="sdserve-test-") as directory:
        path = os.path.join(directory, "backend.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
        log_path = Path(directory) / "backend.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "sdserve_backend", "--socket", path], env=env, stderr=log)
        try:
            sock = accept_unless_exited(listener, process)
            sock.settimeout(TIMEOUT_S)
            yield Backend(process, sock, FrameReader(sock), log_path)
            sock.close()
        finally:
            listener.close()
            if process.poll() is None:
                process.kill()
            process.wait(TIMEOUT_S)


def accept_unless_exited(listener: socket.socket, process: subprocess.Popen[bytes]) -> socket.socket:
    listener.settimeout(0.2)
    for _ in range(int(TIMEOUT_S / 0.2)):
        try:
            return listener.accept()[0]
        except TimeoutError:
            assert process.poll() is None, f"the backend exited with {process.returncode} before connecting"
    raise TimeoutError("the backend did not connect")


def pack(tensors: dict[str, np.ndarray]) -> tuple[list[dict], list[bytes]]:
    metas, payload, offset = [], [], 0
    for name, array in tensors.items():
        data = array.tobytes()
        metas.append({"name": name, "datatype": {"float32": "FP32", "int32": "INT32"}[str(array.dtype)],
                      "shape": list(array.shape), "offset": offset, "length": len(data)})
        payload += [data, bytes(padding_after(len(data)))]
        offset += len(data) + padding_after(len(data))
    return metas, payload


def shift(metas: list[dict], by: int) -> list[dict]:
    return [{**meta, "offset": meta["offset"] + by} for meta in metas]


def test_hello_comes_first_and_names_the_process(backend: Backend) -> None:
    hello = backend.read()
    assert hello.type is MessageType.HELLO_NOTIFY
    assert hello.metadata["protocol"] == 1 and hello.metadata["pid"] == backend.process.pid


def test_execute_answers_each_request_of_a_batch_with_only_requested_outputs(backend: Backend) -> None:
    backend.read()
    assert backend.load("add_sub").metadata == {"cuda": None}
    first, first_payload = pack({"INPUT0": np.array([1, 2, 3, 4], np.float32), "INPUT1": np.ones(4, np.float32)})
    second, second_payload = pack({"INPUT0": np.full(4, 10, np.float32), "INPUT1": np.full(4, 4, np.float32)})
    first_length = sum(len(part) for part in first_payload)
    requests = [
        {"request_id": "a", "inputs": first, "requested_output_names": [], "parameters": {}},
        {"request_id": "b", "inputs": shift(second, first_length), "requested_output_names": ["OUTPUT1"],
         "parameters": {}},
    ]

    backend.send(MessageType.EXECUTE_REQUEST, 7, {"requests": requests}, first_payload + second_payload)
    reply = backend.read()

    assert reply.type is MessageType.EXECUTE_RESPONSE and reply.correlation_id == 7
    first_out, second_out = reply.metadata["responses"]
    assert [meta["name"] for meta in first_out["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    assert [meta["name"] for meta in second_out["outputs"]] == ["OUTPUT1"]
    values = {
        (index, meta["name"]): array_from_payload(reply.payload, meta["name"], meta["datatype"], meta["shape"],
                                                  meta["offset"], meta["length"]).tolist()
        for index, response in enumerate(reply.metadata["responses"]) for meta in response["outputs"]
    }
    assert values == {(0, "OUTPUT0"): [2, 3, 4, 5], (0, "OUTPUT1"): [0, 1, 2, 3], (1, "OUTPUT1"): [6, 6, 6, 6]}


def test_handler_errors_become_error_replies_and_the_loop_keeps_serving(backend: Backend) -> None:
    backend.read()
    backend.send(MessageType.EXECUTE_REQUEST, 3, {"requests": []})
    assert backend.read().metadata == {"error": "RuntimeError: no model is loaded in this backend"}

    backend.send(MessageType.EXECUTE_REQUEST, 4, {"requests": [{"request_id": "x", "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [4], "offset": 0, "length": 16}]}]})
    reply = backend.read()
    assert reply.type is MessageType.EXECUTE_RESPONSE and reply.correlation_id == 4
    assert "outside the 0-byte payload" in reply.metadata["error"]

    backend.send(MessageType.HELLO_NOTIFY, 5, {})
    reply = backend.read()
    assert reply.type is MessageType.ERROR_NOTIFY and reply.correlation_id == 5
    assert "HELLO_NOTIFY (1) is not a request" in reply.metadata["error"]

    backend.send(MessageType.HEALTH_REQUEST, 6, {})
    assert backend.read().type is MessageType.HEALTH_RESPONSE


def test_load_failure_reports_the_exception_type_and_message(backend: Backend) -> None:
    backend.read()
    reply = backend.load("initialize_fails")
    assert reply.type is MessageType.LOAD_RESPONSE
    assert reply.metadata["error"].startswith("FileNotFoundError: weights not found at ")
    # A model's own FileNotFoundError is not known to be its config's fault: the server's error.
    assert reply.metadata["code"] == "INTERNAL"


def test_missing_weights_are_one_line_in_the_log_without_a_traceback(backend: Backend, tmp_path: Path) -> None:
    backend.read()
    (tmp_path / "1").mkdir()
    config = {"name": "no_weights", "max_batch_size": 1, "parameters": {"version": {"string_value": "1.5"}}}

    reply = backend.load_file(DIFFUSION_MODEL, tmp_path, config)

    assert reply.metadata["error"].startswith("weights not found at ")
    assert reply.metadata["code"] == "INVALID_ARG"
    [line] = [line for line in backend.log().splitlines() if "LOAD_REQUEST" in line]
    assert line == f"ERROR sdserve.backend: LOAD_REQUEST failed: {reply.metadata['error']}"
    assert "Traceback" not in backend.log()


def test_an_unknown_config_parameter_fails_the_load_naming_it(backend: Backend, tmp_path: Path) -> None:
    backend.read()
    config = {"name": "typo", "parameters": {"guidance": {"string_value": "2"}}}

    reply = backend.load_file(DIFFUSION_MODEL, tmp_path, config)

    assert reply.metadata["error"].startswith(
        "config parameter 'guidance' is not known (did you mean 'guidance_end', 'guidance_scale' or 'guidance_start'?); known: "
    )
    assert reply.metadata["code"] == "INVALID_ARG"


@pytest.mark.parametrize(("name", "value", "message"), BAD_CONFIG_VALUES + [
    ("scheduler", "no_such_scheduler", "config parameter scheduler 'no_such_scheduler' is not supported; use one of: "),
])
def test_a_config_value_the_diffusion_model_refuses_fails_the_load_as_invalid_arg(
    backend: Backend, tiny_model_dirs: dict[str, Path], tmp_path: Path, name: str, value: str, message: str
) -> None:
    backend.read()
    (tmp_path / "1").symlink_to(tiny_model_dirs["sd"])
    config = {"name": "tiny_sd", "max_batch_size": 1, "parameters": {name: {"string_value": value}}}

    reply = backend.load_file(DIFFUSION_MODEL, tmp_path, config)

    assert reply.type is MessageType.LOAD_RESPONSE
    assert reply.metadata["error"].startswith(message)
    assert reply.metadata["code"] == "INVALID_ARG"
    assert "Traceback" not in backend.log()


@pytest.mark.parametrize(("raised", "reply"), [
    ('pb_utils.TritonModelException("parameter \'mode\' must be fast or slow", code=pb_utils.TritonError.INVALID_ARG)',
     {"error": "parameter 'mode' must be fast or slow", "code": "INVALID_ARG"}),
    ("pb_utils.TritonModelException('the device is gone')",
     {"error": "TritonModelException: the device is gone", "code": "INTERNAL"}),
    ("RuntimeError('the device is gone')", {"error": "RuntimeError: the device is gone", "code": "INTERNAL"}),
    ("ValueError('a library refused a tensor')", {"error": "ValueError: a library refused a tensor", "code": "INTERNAL"}),
])
def test_a_python_model_whose_initialize_raises_fails_the_load_with_the_code_of_its_exception(
    backend: Backend, tmp_path: Path, raised: str, reply: dict[str, str]
) -> None:
    backend.read()
    (tmp_path / "1").mkdir()
    model_file = tmp_path / "1" / "model.py"
    model_file.write_text("import triton_python_backend_utils as pb_utils\n\n\n"
                          "class TritonPythonModel:\n"
                          "    def initialize(self, args):\n"
                          f"        raise {raised}\n")

    answer = backend.load_file(model_file, tmp_path, {"name": "raises", "parameters": {}})

    assert answer.type is MessageType.LOAD_RESPONSE
    assert answer.metadata == reply


def test_weights_the_loader_cannot_read_fail_the_load_as_invalid_arg(backend: Backend, tmp_path: Path) -> None:
    backend.read()
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.safetensors").write_bytes(b"not a checkpoint")
    config = {"name": "junk", "max_batch_size": 1, "parameters": {"weights": {"string_value": "model.safetensors"}}}

    reply = backend.load_file(DIFFUSION_MODEL, tmp_path, config)

    assert reply.metadata["error"].startswith("model.safetensors is not a readable .safetensors checkpoint: ")
    assert reply.metadata["code"] == "INVALID_ARG"


def test_a_missing_model_file_fails_the_load_as_invalid_arg(backend: Backend, tmp_path: Path) -> None:
    backend.read()
    reply = backend.load_file(tmp_path / "1" / "missing.py", tmp_path, {"name": "missing", "parameters": {}})
    assert reply.metadata == {"error": f"model file not found at {tmp_path / '1' / 'missing.py'}", "code": "INVALID_ARG"}


def test_the_diffusion_model_declares_its_capabilities_in_the_load_response(
    backend: Backend, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    backend.read()
    (tmp_path / "1").symlink_to(tiny_model_dirs["sd"])
    config = {"name": "tiny_sd", "max_batch_size": 2, "parameters": {
        "image_height": {"string_value": "64"}, "step_batching": {"string_value": "false"}}}

    reply = backend.load_file(DIFFUSION_MODEL, tmp_path, config)

    assert reply.type is MessageType.LOAD_RESPONSE and set(reply.metadata) == {"cuda", "capabilities"}
    capabilities = reply.metadata["capabilities"]
    assert (capabilities["tasks"], capabilities["batching"], capabilities["max_images"]) == (["text_to_image", "image_to_image", "inpaint"], "request", 2)
    assert capabilities["parameters"]["height"]["default"] == 64
    assert capabilities["parameters"]["width"]["default"] == 128


def test_a_plain_python_model_declares_nothing(backend: Backend) -> None:
    backend.read()
    assert set(backend.load("add_sub").metadata) == {"cuda"}


def test_per_request_errors_and_whole_batch_failures(backend: Backend) -> None:
    backend.read()
    backend.load("errors_per_request")
    good, good_payload = pack({"INPUT0": np.ones(4, np.float32), "INPUT1": np.ones(4, np.float32)})
    bad, bad_payload = pack({"INPUT0": -np.ones(4, np.float32), "INPUT1": np.ones(4, np.float32)})
    requests = [{"request_id": "good", "inputs": good}, {"request_id": "bad", "inputs": shift(bad, 128)}]

    backend.send(MessageType.EXECUTE_REQUEST, 8, {"requests": requests}, good_payload + bad_payload)
    responses = backend.read().metadata["responses"]
    assert "outputs" in responses[0]
    assert responses[1] == {"error": "INPUT0 must be non-negative", "code": "INVALID_ARG"}

    requests[0]["parameters"] = {"raise": True}
    backend.send(MessageType.EXECUTE_REQUEST, 9, {"requests": requests}, good_payload + bad_payload)
    assert backend.read().metadata == {"error": "TritonModelException: asked to fail the whole batch"}


def test_health_and_cancel_are_answered_while_execute_runs(backend: Backend) -> None:
    backend.read()
    backend.load("slow_steps")
    inputs, payload = pack({"STEPS": np.array([2], np.int32)})
    backend.send(MessageType.EXECUTE_REQUEST, 10, {"requests": [{"request_id": "slow", "inputs": inputs}]}, payload)
    progress = backend.read()
    assert progress.type is MessageType.PROGRESS_NOTIFY and progress.correlation_id == 10
    assert progress.metadata == {"request_id": "slow", "request_index": 0, "step": 0, "steps": 2}

    backend.send(MessageType.HEALTH_REQUEST, 11, {})
    assert backend.read().type is MessageType.HEALTH_RESPONSE
    backend.send(MessageType.CANCEL_REQUEST, 12, {"request_ids": ["slow"]})
    reply = backend.read()

    assert reply.correlation_id == 10
    assert reply.metadata == {"responses": [{"error": "cancelled after 0 steps", "code": "CANCELLED"}]}


def test_finalize_calls_the_model_replies_and_exits_zero(backend: Backend) -> None:
    backend.read()
    backend.load("add_sub")
    backend.send(MessageType.FINALIZE_REQUEST, 13, {})
    reply = backend.read()
    assert reply.type is MessageType.FINALIZE_RESPONSE and reply.correlation_id == 13
    assert backend.process.wait(TIMEOUT_S) == 0


def test_backend_exits_when_the_core_closes_the_socket(backend: Backend) -> None:
    backend.read()
    backend.sock.shutdown(socket.SHUT_RDWR)
    assert backend.process.wait(TIMEOUT_S) == 0
