"""The model-facing `triton_python_backend_utils` API."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import triton_python_backend_utils as pb_utils

MODEL_CONFIG = {
    "name": "m",
    "input": [{"name": "PROMPT", "data_type": "TYPE_STRING", "dims": [1]}],
    "output": [{"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3]}],
}


def test_tensor_reports_name_array_dtype_and_location() -> None:
    array = np.zeros((2, 3), dtype=np.float16)
    tensor = pb_utils.Tensor("latents", array)

    assert tensor.name() == "latents"
    assert tensor.as_numpy() is array
    assert tensor.triton_dtype() == pb_utils.TRITONSERVER_TYPE_FP16
    assert tensor.is_cpu()


def test_string_arrays_are_bytes_tensors() -> None:
    assert pb_utils.Tensor("p", np.array(["a cat"], dtype=np.object_)).triton_dtype() == pb_utils.TRITONSERVER_TYPE_BYTES
    assert pb_utils.Tensor("p", np.array([b"a"])).triton_dtype() == pb_utils.TRITONSERVER_TYPE_BYTES


def test_tensor_rejects_an_empty_name_and_unsupported_dtypes() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="non-empty string"):
        pb_utils.Tensor("", np.zeros(1))
    with pytest.raises(TypeError, match="complex128 has no KServe datatype"):
        pb_utils.Tensor("c", np.zeros(1, dtype=np.complex128))


def test_tensor_from_dlpack_shares_memory_with_its_source() -> None:
    source = np.arange(6, dtype=np.int64)
    tensor = pb_utils.Tensor.from_dlpack("x", source)
    assert np.shares_memory(tensor.as_numpy(), source)


def test_inference_request_accessors() -> None:
    prompt = pb_utils.Tensor("PROMPT", np.array([b"a cat"], dtype=np.object_))
    request = pb_utils.InferenceRequest([prompt], request_id="r1", requested_output_names=["IMAGE"],
                                        parameters={"seed": 3}, flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START)

    assert request.inputs() == [prompt]
    assert request.request_id() == "r1"
    assert request.requested_output_names() == ["IMAGE"]
    assert json.loads(request.parameters()) == {"seed": 3}
    assert request.flags() == 1
    assert pb_utils.get_input_tensor_by_name(request, "PROMPT") is prompt
    assert pb_utils.get_input_tensor_by_name(request, "MISSING") is None
    assert not request.is_cancelled()
    request.mark_cancelled()
    assert request.is_cancelled()


def test_report_progress_hands_step_and_steps_to_the_sink() -> None:
    seen: list[tuple[str, object, object]] = []
    request = pb_utils.InferenceRequest([], request_id="r", progress_sink=lambda r, s, n, _preview: seen.append((r.request_id(), s, n)))
    request.report_progress(3, 20)
    pb_utils.InferenceRequest([]).report_progress(1, 2)
    assert seen == [("r", 3, 20)]


def test_inference_response_outputs_and_errors() -> None:
    image = pb_utils.Tensor("IMAGE", np.zeros((1, 1, 3), np.uint8))
    ok = pb_utils.InferenceResponse(output_tensors=[image])
    failed = pb_utils.InferenceResponse(error=pb_utils.TritonError("bad seed", pb_utils.TritonError.INVALID_ARG))

    assert ok.output_tensors() == [image] and not ok.has_error() and ok.error() is None
    assert pb_utils.get_output_tensor_by_name(ok, "IMAGE") is image
    assert pb_utils.get_output_tensor_by_name(ok, "OTHER") is None
    assert failed.has_error() and failed.output_tensors() == []
    assert failed.error().message() == "bad seed"
    assert failed.error().code() == pb_utils.TritonError.INVALID_ARG


def test_triton_error_defaults_to_internal_and_rejects_unknown_codes() -> None:
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL
    assert [pb_utils.TritonError.UNKNOWN, pb_utils.TritonError.CANCELLED] == [0, 7]
    with pytest.raises(ValueError, match="code 99"):
        pb_utils.TritonError("x", 99)


def test_config_lookup_by_name_accepts_dicts_and_json() -> None:
    assert pb_utils.get_output_config_by_name(MODEL_CONFIG, "IMAGE")["data_type"] == "TYPE_UINT8"
    assert pb_utils.get_input_config_by_name(json.dumps(MODEL_CONFIG), "PROMPT")["dims"] == [1]
    assert pb_utils.get_output_config_by_name(MODEL_CONFIG, "PROMPT") is None


@pytest.mark.parametrize(("config_type", "numpy_type"), [
    ("TYPE_FP32", np.float32), ("TYPE_UINT8", np.uint8), ("TYPE_BOOL", np.bool_), ("TYPE_STRING", np.object_),
    ("TYPE_INT64", np.int64), ("TYPE_FP16", np.float16),
])
def test_config_type_strings_map_to_numpy(config_type: str, numpy_type: type) -> None:
    assert pb_utils.triton_string_to_numpy(config_type) is numpy_type


def test_type_conversions_round_trip_through_triton_numbers() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_NOPE") is None
    assert pb_utils.numpy_to_triton_type(np.float32) == pb_utils.TRITONSERVER_TYPE_FP32
    assert pb_utils.numpy_to_triton_type(np.object_) == pb_utils.TRITONSERVER_TYPE_BYTES
    assert pb_utils.numpy_to_triton_type(np.complex64) is None
    for triton_type in range(pb_utils.TRITONSERVER_TYPE_BOOL, pb_utils.TRITONSERVER_TYPE_BYTES + 1):
        assert pb_utils.numpy_to_triton_type(pb_utils.triton_to_numpy_type(triton_type)) == triton_type
    assert pb_utils.triton_to_numpy_type(pb_utils.TRITONSERVER_TYPE_INVALID) is None


def test_byte_tensor_helpers_round_trip() -> None:
    wire = pb_utils.serialize_byte_tensor(np.array(["x", "yz"], dtype=np.object_))
    assert pb_utils.deserialize_bytes_tensor(wire).tolist() == [b"x", b"yz"]


def test_logger_writes_to_the_model_log_at_each_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="sdserve.model"):
        pb_utils.Logger.log_info("i")
        pb_utils.Logger.log_warn("w")
        pb_utils.Logger.log_error("e")
        pb_utils.Logger.log_verbose("v")
    assert [(record.levelname, record.message) for record in caplog.records] == [
        ("INFO", "i"), ("WARNING", "w"), ("ERROR", "e"), ("DEBUG", "v")]
