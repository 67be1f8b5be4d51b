"""A short soak (soak.py): clients send valid and invalid requests over HTTP and gRPC for 40 s,
the backend is SIGKILLed at 12 s. The server keeps answering, restarts the backend, rejects every
invalid request with a 4xx / client status, fails valid ones only while the backend is down, and
its memory stays bounded. bench/reliability/ runs the same for 10 minutes.
"""
from __future__ import annotations

import pytest

from fuzz_support import FUZZ_MODEL, fuzz_repository
from sdserve_server import serving
from soak import run_soak

DURATION_S = 40.0
CLIENTS = 6
KILL_AT_S = 12.0
MAX_SERVER_GROWTH_MIB = 64


def test_soak_survives_a_killed_backend_and_answers_every_mistake_with_a_client_error(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repository = fuzz_repository(tmp_path_factory.mktemp("soak") / "repo")
    with serving(repository, "--model-control-mode", "explicit", "--load-model", FUZZ_MODEL) as server:
        result = run_soak(server.http, server.grpc, server.pid, DURATION_S, CLIENTS, [KILL_AT_S],
                          on_progress=lambda line: None)
    print("soak:", {key: value for key, value in result.as_dict().items() if key != "memory"})

    assert result.server_alive
    [kill] = result.backend_kills
    assert kill.get("ready_again_after_s") is not None, kill
    assert kill["killed_pid"] not in kill["new_pids"]
    classes = result.classes
    assert classes["invalid: server error"] == 0, result.by_kind
    assert classes["invalid: accepted"] == 0, result.by_kind
    assert classes["valid: failed (server error)"] == 0, result.by_kind
    assert classes["valid: rejected"] == 0, result.by_kind
    assert classes["valid: succeeded"] >= 50 and classes["invalid: rejected (4xx)"] >= 50, classes
    # Memory: the server's, from the first sample to the last (the backend is a new process after the kill).
    growth = result.memory[-1]["server_rss_mib"] - result.memory[0]["server_rss_mib"]
    assert growth <= MAX_SERVER_GROWTH_MIB, result.memory
