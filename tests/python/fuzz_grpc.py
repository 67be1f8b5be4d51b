"""The gRPC fuzzer: hypothesis builds messages of every RPC of `inference.GRPCInferenceService`
from the server's own proto/grpc_service.proto (read by protobufjs, as the server reads it, and
handed to Python's protobuf as a descriptor set), sends them to a real server, and checks that
each answer is OK or a status that names the client's mistake: never INTERNAL or UNKNOWN, and
never a server that stops answering.

Every RPC gets generic messages (each field drawn by its type, names biased towards the served
model). ModelInfer and ModelStreamInfer also get requests shaped like the model's: prompt tensors
with random shapes, datatypes, contents, raw contents and parameters, so that many reach the
backend. Costly but valid sizes and steps are made small (`fuzz_support.cheap_parameters`).
"""
from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz_support import FUZZ_MODEL, PROJECT_ROOT, Tally, cheap_parameters

SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR_SCRIPT = Path(__file__).with_name("proto_descriptor_set.mjs")

# Answers that name a client's mistake, or a feature sdserve does not have.
CLIENT_STATUSES = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION,
})
REPOSITORY_RPCS = ("RepositoryModelLoad", "RepositoryModelUnload")
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES"]
PARAMETER_KEYS = ["steps", "width", "height", "seed", "guidance_scale", "scheduler", "priority", "timeout",
                  "preview", "stream_progress", "binary_data_output", "binary_data_size", "shared_memory_region",
                  "classification", "sequence_id"]


@cache
def _pool_and_messages() -> tuple[descriptor_pool.DescriptorPool, dict[str, type[Message]]]:
    encoded = subprocess.run(["node", str(DESCRIPTOR_SCRIPT)], check=True, capture_output=True, text=True,
                             cwd=PROJECT_ROOT).stdout
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(encoded)).file
    pool = descriptor_pool.DescriptorPool()
    return pool, message_factory.GetMessages(list(files), pool=pool)


def message_class(name: str) -> type[Message]:
    return _pool_and_messages()[1][f"inference.{name}"]


@dataclass(frozen=True)
class Rpc:
    name: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool


def service_rpcs() -> list[Rpc]:
    pool, messages = _pool_and_messages()
    service = pool.FindServiceByName(SERVICE)
    return [Rpc(method.name, messages[method.input_type.full_name], messages[method.output_type.full_name],
                method.client_streaming) for method in service.methods]


# ---------------------------------------------------------------------------------------------
# Strategies

_text = st.text(max_size=24)
_names = st.one_of(st.just(FUZZ_MODEL), st.sampled_from(["", "prompt", "negative_prompt", "generated_image", "1"]), _text)
_versions = st.one_of(st.sampled_from(["", "1", "2", "-1", "0"]), _text)
_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-3, 8).filter(lambda v: low <= v <= high), st.integers(low, high))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name in ("name", "model_name"):
            return _names
        if field.name in ("version", "model_version"):
            return _versions
        if field.name == "datatype":
            return st.one_of(st.sampled_from(DATATYPES), _text)
        return _text
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    return _integers(*_INTS[field.type])


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return message_dicts(field.message_type, depth + 1)
    return _scalar(field)


@st.composite
def message_dicts(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
    """A message of `descriptor` as {field: value}: each field absent or drawn by its type (one
    field of each oneof; nested messages a few levels deep)."""
    values: dict[str, Any] = {}
    chosen_oneofs: set[str] = set()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and (oneof.name in chosen_oneofs or not draw(st.booleans())):
            continue
        if (field.message_type is not None and depth >= 3) or not draw(st.booleans()):
            continue
        if oneof is not None:
            chosen_oneofs.add(oneof.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            keys = st.one_of(st.sampled_from(PARAMETER_KEYS), _scalar(key_field)) if key_field.type == FieldDescriptor.TYPE_STRING else _scalar(key_field)
            values[field.name] = draw(st.dictionaries(keys, _field_values(value_field, depth), max_size=4))
        elif field.is_repeated:
            values[field.name] = draw(st.lists(_field_values(field, depth), max_size=4))
        else:
            values[field.name] = draw(_field_values(field, depth))
    return values


def _parameter(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"bool_param": value}
    if isinstance(value, int):
        return {"int64_param": value} if value < 2**63 else {"uint64_param": value}
    if isinstance(value, float):
        return {"double_param": value}
    return {"string_param": str(value)}


_parameter_values = st.one_of(
    st.booleans(), st.integers(-2, 40), st.integers(-(2**63), 2**64 - 1), st.floats(), _text,
    st.sampled_from(["euler", "pndm", "ddim", "true", "false", "1", "2"]),
)


def _bytes_element(text: bytes) -> bytes:
    return len(text).to_bytes(4, "little") + text


@st.composite
def model_infer_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A ModelInferRequest shaped like the served model's: prompt tensors of random shape, datatype,
    contents or raw contents (well-formed or not), random parameters."""
    inputs, raw = [], []
    use_raw = draw(st.booleans())
    # Half are well-formed (the model's inputs, shapes and datatypes): those reach the backend.
    well_formed = draw(st.booleans())
    batch = draw(st.integers(1, 3))
    names = ["prompt"] + (["negative_prompt"] if draw(st.booleans()) else []) if well_formed \
        else draw(st.lists(st.sampled_from(["prompt", "negative_prompt", "x"]), max_size=3))
    for name in names:
        if well_formed:
            shape, datatype = [batch, 1], "BYTES"
            texts = draw(st.lists(st.text(max_size=30).map(str.encode), min_size=batch, max_size=batch))
        else:
            shape = draw(st.one_of(st.just([batch, 1]), st.lists(st.integers(-2, 5), max_size=4),
                                   st.lists(st.integers(-(2**40), 2**40), max_size=3)))
            datatype = draw(st.one_of(st.just("BYTES"), st.sampled_from(DATATYPES), _text))
            texts = draw(st.lists(st.binary(max_size=30), min_size=0, max_size=4))
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if use_raw:
            well_encoded = st.just(b"".join(_bytes_element(t) for t in texts))
            raw.append(draw(well_encoded if well_formed else st.one_of(well_encoded, st.binary(max_size=40))))
        elif well_formed:
            tensor["contents"] = {"bytes_contents": texts}
        else:
            tensor["contents"] = draw(st.one_of(
                st.fixed_dictionaries({"bytes_contents": st.just(texts)}),
                st.fixed_dictionaries({"fp32_contents": st.lists(st.floats(width=32), max_size=4)}),
                st.fixed_dictionaries({"int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4)}),
                st.just({}),
            ))
        inputs.append(tensor)
    parameters = draw(st.dictionaries(st.one_of(st.sampled_from(PARAMETER_KEYS), _text), _parameter_values, max_size=5))
    if well_formed:  # mostly parameters the model takes, with values it accepts
        parameters = {key: value for key, value in parameters.items() if draw(st.integers(0, 3)) == 0}
        parameters.update(draw(st.fixed_dictionaries({}, optional={
            "steps": st.integers(1, 2), "width": st.sampled_from([8, 16, 32]), "height": st.sampled_from([8, 16, 32]),
            "seed": st.integers(0, 2**63 - 1), "guidance_scale": st.floats(0, 20), "stream_progress": st.booleans(),
            "scheduler": st.sampled_from(["", "euler", "euler_a", "ddim", "pndm", "lms", "dpm++", "unipc", "heun"]),
        })))
    request: dict[str, Any] = {
        "model_name": FUZZ_MODEL if well_formed else draw(st.one_of(st.just(FUZZ_MODEL), _names)),
        "model_version": draw(st.sampled_from(["", "1"]) if well_formed else _versions),
        "id": draw(_text),
        "inputs": inputs,
        "parameters": {key: _parameter(value) for key, value in parameters.items()},
    }
    if raw:
        request["raw_input_contents"] = raw
    if draw(st.booleans()):
        request["outputs"] = [{"name": "generated_image" if well_formed else draw(st.sampled_from(["generated_image", "x", ""]))}]
    return request


def _parameter_value(parameter: dict[str, Any]) -> Any:
    return next(iter(parameter.values()), None)


def make_cheap(rpc: str, request: dict[str, Any]) -> dict[str, Any]:
    """The request with costly but valid request parameters made small, and repository requests
    kept off the served model."""
    if rpc in REPOSITORY_RPCS and request.get("model_name") == FUZZ_MODEL:
        request["model_name"] = f"not_{FUZZ_MODEL}"
    parameters = request.get("parameters")
    if rpc in ("ModelInfer", "ModelStreamInfer") and parameters:
        plain = {key: _parameter_value(value) for key, value in parameters.items()}
        for key, value in plain.items():
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                plain[key] = int(value)  # the backend reads numbers given as text too
        cheap = cheap_parameters(plain)
        request["parameters"] = {key: (_parameter(cheap[key]) if cheap[key] != plain[key] else value)
                                 for key, value in parameters.items()}
    return request


# ---------------------------------------------------------------------------------------------
# Sending


def _call_unary(channel: grpc.Channel, rpc: Rpc, message: Message) -> tuple[grpc.StatusCode, str]:
    method = channel.unary_unary(f"/{SERVICE}/{rpc.name}", request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=rpc.response.FromString)
    try:
        method(message, timeout=120)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _call_stream(channel: grpc.Channel, rpc: Rpc, messages: list[Message]) -> tuple[grpc.StatusCode, list[str]]:
    """The stream's status and the error message of each request's final answer ("" for a response)."""
    method = channel.stream_stream(f"/{SERVICE}/{rpc.name}", request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=rpc.response.FromString)
    try:
        answers = list(method(iter(messages), timeout=120))
    except grpc.RpcError as error:
        return error.code(), [error.details() or ""]
    finals = [answer.error_message for answer in answers if "sdserve_progress" not in answer.infer_response.parameters]
    if len(finals) != len(messages):
        return grpc.StatusCode.UNKNOWN, [f"{len(messages)} requests on the stream got {len(finals)} final answers"]
    return grpc.StatusCode.OK, finals


@dataclass(frozen=True)
class GrpcBudget:
    per_rpc: int
    """Generic messages per RPC."""
    model_infer: int
    """Model-shaped requests, for ModelInfer and (in groups of 1-3) ModelStreamInfer each."""


def run_grpc_fuzz(address: str, tally: Tally, budget: GrpcBudget,
                  on_progress: Callable[[str], None] = print) -> None:
    """Fuzzes every RPC of the server at `address` (host:port), recording each answer's status in
    `tally` and each INTERNAL/UNKNOWN/lost answer in `tally.failures`."""
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as channel:
        for rpc in service_rpcs():
            requests = message_dicts(rpc.request.DESCRIPTOR)
            _fuzz(channel, rpc, requests, budget.per_rpc, tally)
            on_progress(f"gRPC {rpc.name}: {tally.requests} requests, {len(tally.failures)} failures so far")
        rpcs = {rpc.name: rpc for rpc in service_rpcs()}
        _fuzz(channel, rpcs["ModelInfer"], model_infer_requests(), budget.model_infer, tally)
        _fuzz(channel, rpcs["ModelStreamInfer"], model_infer_requests(), budget.model_infer, tally)
        on_progress(f"gRPC model-shaped inference: {tally.requests} requests, {len(tally.failures)} failures so far")


def _fuzz(channel: grpc.Channel, rpc: Rpc, requests: st.SearchStrategy[dict[str, Any]], examples: int,
          tally: Tally) -> None:
    groups = st.lists(requests, min_size=1, max_size=3) if rpc.client_streaming else requests.map(lambda r: [r])

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(group=groups)
    def send(group: list[dict[str, Any]]) -> None:
        messages = [_to_message(rpc, make_cheap(rpc.name, request)) for request in group]
        if rpc.client_streaming:
            code, errors = _call_stream(channel, rpc, messages)
            for error in errors if code == grpc.StatusCode.OK else messages:
                tally.count("stream answer: error" if error else "stream answer: OK")
            details = "; ".join(errors)
        else:
            code, details = _call_unary(channel, rpc, messages[0])
            tally.count(code.name)
        if code not in CLIENT_STATUSES:
            tally.fail(f"gRPC {rpc.name}: {code.name}: {details}\n{[str(m)[:2000] for m in messages]}")

    send()


def _to_message(rpc: Rpc, request: dict[str, Any]) -> Message:
    message = rpc.request()
    fill_message(message, request)
    return message


def fill_message(message: Message, values: dict[str, Any]) -> None:
    """Sets `values` ({field: value}, nested dicts for messages and map values) on `message`."""
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.message_type is not None:
                    fill_message(target[key], item)
                else:
                    target[key] = item
        elif field.is_repeated:
            if field.message_type is not None:
                for item in value:
                    fill_message(target.add(), item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.SetInParent()
            fill_message(target, value)
        else:
            setattr(message, name, value)
