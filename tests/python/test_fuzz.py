"""The fuzz suite: schemathesis over the OpenAPI document (fuzz_http.py) and hypothesis over the
gRPC proto (fuzz_grpc.py), together over 10,000 generated requests against one real server on the
tiny model. Derandomized: every run sends the same requests.

Each fuzzer must find no 5xx / INTERNAL / UNKNOWN answer to a client's mistake, no answer that
breaks the document, no lost connection; the server and its backend must still be the same
processes afterwards (no crash, no restart), with their memory grown by at most a bound.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from fuzz_grpc import GrpcBudget, run_grpc_fuzz
from fuzz_http import Budget, run_http_fuzz
from fuzz_support import FUZZ_MODEL, MemorySample, Tally, fuzz_repository, is_alive, sample_memory
from sdserve_server import ServerAddresses, serving

HTTP_BUDGET = Budget(default=215, costly=75)
GRPC_BUDGET = GrpcBudget(per_rpc=300, model_infer=400)
# Together over 10,000; gRPC requests cost less to make and send.
MIN_HTTP_REQUESTS = 4_000
MIN_GRPC_REQUESTS = 6_000
MAX_SERVER_GROWTH = 64 * 2**20
MAX_BACKEND_GROWTH = 256 * 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    repository = fuzz_repository(tmp_path_factory.mktemp("fuzz") / "repo")
    with serving(repository, "--model-control-mode", "explicit", "--load-model", FUZZ_MODEL) as addresses:
        yield addresses


def _check(server: ServerAddresses, tally: Tally, before: MemorySample, min_requests: int) -> None:
    after = sample_memory(server.pid)
    failures = "\n\n".join(tally.failures[:5])
    assert tally.failures == [], f"{len(tally.failures)} failures; the first ones:\n{failures}"
    assert tally.requests >= min_requests, tally.as_dict()
    assert is_alive(server.pid)
    assert after.backend_pids == before.backend_pids, "the backend was restarted: it crashed or hung"
    assert after.server - before.server <= MAX_SERVER_GROWTH, (before, after)
    assert after.backends - before.backends <= MAX_BACKEND_GROWTH, (before, after)


def test_http_fuzzing_finds_no_server_error_and_no_answer_off_the_document(server: ServerAddresses) -> None:
    before = sample_memory(server.pid)
    tally = Tally()
    run_http_fuzz(f"http://{server.http}", tally, HTTP_BUDGET, on_progress=lambda line: None)
    print("HTTP fuzzing:", tally.as_dict())
    assert tally.statuses["2xx"] >= 150, tally.as_dict()  # the fuzzer reaches real work, not only errors
    _check(server, tally, before, MIN_HTTP_REQUESTS)


def test_grpc_fuzzing_answers_only_ok_or_a_client_error_status(server: ServerAddresses) -> None:
    before = sample_memory(server.pid)
    tally = Tally()
    run_grpc_fuzz(server.grpc, tally, GRPC_BUDGET, on_progress=lambda line: None)
    print("gRPC fuzzing:", tally.as_dict())
    assert tally.statuses["OK"] + tally.statuses["stream answer: OK"] >= 300, tally.as_dict()
    _check(server, tally, before, MIN_GRPC_REQUESTS)
