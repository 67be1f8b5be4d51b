"""Replicas behind a real load balancer: three sdserve replicas on the tiny model behind Envoy
running deploy/envoy/envoy.yaml (active health checks on the model's ready route, retries of the
requests no replica processed). 64 clients send 300 requests while one replica is SIGTERMed and
another SIGKILLed, each then restarted: every request is answered, the SIGTERMed replica drains
with nothing lost, and the only failures are the SIGKILLed replica's requests in flight, each a
503 whose JSON error says so. bench/deploy/run.py runs the same with 1,000 requests and reports
the figures."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from replicas_envoy import ENVOY_CONFIG, KILLED_MESSAGE, ScenarioResult, envoy_config, envoy_executable, run_scenario

CLIENTS = 64
REQUESTS = 300


def test_the_deployed_envoy_config_is_valid_for_the_envoy_in_requirements() -> None:
    done = subprocess.run([envoy_executable(), "--mode", "validate", "-c", str(ENVOY_CONFIG), "--disable-hot-restart"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> ScenarioResult:
    return run_scenario(tmp_path_factory.mktemp("replicas_envoy"), CLIENTS, REQUESTS, log=lambda line: print(line, flush=True))


def test_every_request_is_answered(scenario: ScenarioResult) -> None:
    assert len(scenario.outcomes) == REQUESTS
    assert sorted(outcome.index for outcome in scenario.outcomes) == list(range(REQUESTS))
    unanswered = [outcome for outcome in scenario.outcomes if outcome.status == 0]
    assert unanswered == [], "every request gets an HTTP answer"
    assert {outcome.status for outcome in scenario.outcomes} <= {200, 503}


def test_the_sigtermed_replica_drains_with_nothing_lost(scenario: ScenarioResult) -> None:
    terminated = next(event for event in scenario.events if event.signal == "SIGTERM")
    assert terminated.exit_code == 0, "the server drained within its exit timeout"
    assert terminated.in_flight > 0, "SIGTERM came with requests in flight on the replica"
    assert terminated.unhealthy_at is not None and terminated.unhealthy_at - terminated.at < 5, \
        "envoy took the draining replica out of rotation at its next health checks"
    assert terminated.exited_at is not None
    served_before_exit = [outcome for outcome in scenario.outcomes
                          if scenario.upstream_of(outcome) == terminated.host and outcome.started < terminated.exited_at]
    straddling = [outcome for outcome in served_before_exit if outcome.started < terminated.at < outcome.ended]
    assert straddling, "some requests were running on the replica when it got SIGTERM"
    assert all(outcome.status == 200 for outcome in served_before_exit), served_before_exit


def test_the_only_failures_are_the_sigkilled_replicas_requests_in_flight(scenario: ScenarioResult) -> None:
    killed = next(event for event in scenario.events if event.signal == "SIGKILL")
    assert killed.exit_code == -9
    assert killed.in_flight > 0, "SIGKILL came with requests in flight on the replica"
    failures = scenario.failures()
    assert failures, "the requests in flight on the SIGKILLed replica fail"
    for failure in failures:
        record = scenario.access[f"load-{failure.index}"]
        assert record["upstream_host"] == killed.host, (failure, record)
        assert "UC" in record["flags"], record  # upstream connection terminated
        assert scenario.in_flight_when_killed(failure), failure
        assert failure.status == 503
        assert json.loads(failure.error)["error"].startswith(KILLED_MESSAGE)


def test_envoy_retried_only_what_no_replica_processed_and_those_succeeded(scenario: ScenarioResult) -> None:
    retried = [outcome for outcome in scenario.outcomes if int(scenario.access[f"load-{outcome.index}"]["attempts"]) > 1]
    failed_after_retry = [outcome for outcome in retried if outcome.status != 200
                          and "UC" not in scenario.access[f"load-{outcome.index}"]["flags"]]
    assert failed_after_retry == []
    assert scenario.envoy_counters.get("upstream_rq_retry_overflow", 0) == 0


def test_both_replicas_recover_and_serve_again(scenario: ScenarioResult) -> None:
    for event in scenario.events:
        assert event.restarted_at is not None and event.healthy_at is not None, event
        assert event.healthy_at > event.restarted_at
    after = scenario.extra["after_recovery"]
    assert after["ok"] == after["requests"]
    assert all(count > 0 for count in after["served_by_replica"].values()), after


def test_the_scenario_runs_the_deployed_config_with_only_addresses_and_the_model_changed() -> None:
    deployed = yaml.safe_load(ENVOY_CONFIG.read_text())
    tested = envoy_config([1001, 1002, 1003], 2000, 2001)
    for config in (deployed, tested):
        [cluster] = config["static_resources"]["clusters"]
        del cluster["load_assignment"], cluster["type"], cluster["health_checks"][0]["http_health_check"]["path"]
        del config["static_resources"]["listeners"][0]["address"], config["admin"]["address"]
    assert tested == deployed
