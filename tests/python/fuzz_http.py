"""The HTTP fuzzer: schemathesis generates requests from the server's own OpenAPI document
(`GET /v2/openapi.json`), valid ones and ones that break it, for every operation, sends them to a
real server and checks each answer: no 5xx for a client's mistake (`not_a_server_error`), the
status, content type and body the document promises, and invalid data rejected.

The document is fuzzed as served, with two narrowings so that generated requests reach real work:
model path parameters are often the served model (and its version 1), and an inference request
is often shaped like one the model takes. Costly but valid sizes and steps are made small
(`fuzz_support.cheap_parameters`).
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from fuzz_support import CHEAP_IMAGES, CHEAP_SIDE, CHEAP_STEPS, FUZZ_MODEL, Tally, cheap_parameters, http_status_class

# A `size` the document allows (only those are made small: a negative case stays negative).
VALID_SIZE = re.compile(r"[1-9][0-9]*x[1-9][0-9]*")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]

# Routes that change what is served: fuzzed, but never against the served model (a reload or an
# unload would turn the fuzzer's other requests into 503s, which are the server's answer to a state,
# not to a mistake).
REPOSITORY_ROUTES = ("/load", "/unload")


def _one_of_or_any(values: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"enum": values}, schema]}


def _model_inference_request() -> dict[str, Any]:
    """An inference request shaped like one the served model takes (prompt, optional negative prompt)."""
    text_input = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"enum": ["prompt", "negative_prompt"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3}, "maxItems": 3},
            "datatype": {"enum": ["BYTES"]},
            "data": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        },
    }
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": text_input, "minItems": 1, "maxItems": 2},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                   "properties": {"name": {"enum": ["generated_image"]}}}},
            "parameters": {
                "type": "object",
                "properties": {
                    "steps": {"type": "integer", "minimum": 1, "maximum": CHEAP_STEPS},
                    "width": {"enum": [8, 16, 24, 32]},
                    "height": {"enum": [8, 16, 24, 32]},
                    "seed": {"type": "integer", "minimum": 0},
                    "binary_data_output": {"type": "boolean"},
                },
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
        },
    }


def fuzzable_document(document: dict[str, Any]) -> dict[str, Any]:
    """The served document with the two narrowings of the module docstring."""
    document = copy.deepcopy(document)
    for path, item in document["paths"].items():
        for parameter in item.get("parameters", []):
            if parameter["name"] == "model":
                if not path.endswith(REPOSITORY_ROUTES):
                    parameter["schema"] = _one_of_or_any([FUZZ_MODEL], parameter["schema"])
            elif parameter["name"] == "version":
                parameter["schema"] = _one_of_or_any(["1"], parameter["schema"])
    schemas = document["components"]["schemas"]
    schemas["InferRequest"] = {"anyOf": [schemas["InferRequest"], _model_inference_request()]}
    # At most CHEAP_IMAGES copies of each prompt; a WxH of two small numbers.
    schemas["ImagesRequest"]["properties"]["n"]["maximum"] = CHEAP_IMAGES
    return document


def make_cheap(case: schemathesis.Case) -> schemathesis.Case:
    """The case with costly but valid values made small (in the body, its `parameters`, and the
    OpenAI-style `size`), and repository requests kept off the served model."""
    if case.operation.path.endswith(REPOSITORY_ROUTES) and case.path_parameters.get("model") == FUZZ_MODEL:
        case.path_parameters["model"] = f"not_{FUZZ_MODEL}"
    body = case.body
    if not isinstance(body, dict):
        return case
    body = cheap_parameters(body)
    if isinstance(body.get("parameters"), dict):
        body["parameters"] = cheap_parameters(body["parameters"])
    size = body.get("size")
    if isinstance(size, str) and VALID_SIZE.fullmatch(size):
        width, _, height = size.partition("x")
        if int(width) * int(height) > CHEAP_SIDE * CHEAP_SIDE:
            body["size"] = f"{CHEAP_SIDE}x{CHEAP_SIDE}"
    case.body = body
    return case


@dataclass(frozen=True)
class Budget:
    """Examples per operation and generation mode."""

    default: int
    costly: int
    """For the operations that run the model (infer, generate, images)."""


COSTLY_OPERATIONS = ("/infer", "/generate", "/generate_stream", "/v1/images/generations")


def run_http_fuzz(base_url: str, tally: Tally, budget: Budget, on_progress: Callable[[str], None] = print) -> None:
    """Fuzzes every operation of the server at `base_url`, positive then negative, recording each
    answer in `tally` and each failed check or broken connection in `tally.failures`."""
    document = requests.get(f"{base_url}/v2/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(fuzzable_document(document))
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = budget.costly if operation.path.endswith(COSTLY_OPERATIONS) else budget.default
        # A path parameter is a string whatever it holds: only bodies can break the document.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.body else [])
        for mode in modes:
            before = tally.requests
            _fuzz_operation(operation, mode, examples, base_url, session, tally)
            on_progress(f"{operation.label} {mode.value}: {tally.requests - before} requests, {len(tally.failures)} failures so far")


def _fuzz_operation(operation: Any, mode: GenerationMode, examples: int, base_url: str,
                    session: requests.Session, tally: Tally) -> None:
    strategy: st.SearchStrategy[schemathesis.Case] = operation.as_strategy(generation_mode=mode).map(make_cheap)

    # Derandomized: the same requests on every run. No shrinking: every failure is recorded as found.
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def send(case: schemathesis.Case) -> None:
        try:
            response = case.call(base_url=base_url, session=session, timeout=120)
        except requests.RequestException as exc:
            tally.count("no answer")
            tally.fail(f"{operation.label} ({mode.value}): no answer: {exc}\n{case.as_curl_command()}")
            return
        tally.count(http_status_class(response.status_code))
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, FailureGroup) as exc:
            tally.fail(f"{operation.label} ({mode.value}): {response.status_code}\n{exc}")

    try:
        send()
    except Unsatisfiable:
        pass  # nothing to break: an operation without parameters or body has no negative cases
