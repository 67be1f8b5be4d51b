"""A soak: many clients send a mix of valid and invalid requests over HTTP and gRPC for a while,
the backend is killed (SIGKILL) partway through, and the server's and backend's memory is
sampled throughout.

Each request is classed by what it should get and what it got: a valid request should succeed; an
invalid one should get a 4xx / a gRPC status naming the mistake. A valid request that fails while
the backend is being restarted is counted apart (the server's answer to a lost backend: 500 for a
request it was running, 503 while the model is not ready), and so is any 5xx for an invalid
request, which is a bug.
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import requests

from fuzz_grpc import SERVICE, fill_message, message_class
from fuzz_support import FUZZ_MODEL, MemorySample, child_pids, is_alive, sample_memory

GENERATE = f"/v2/models/{FUZZ_MODEL}/generate"
INFER = f"/v2/models/{FUZZ_MODEL}/infer"
# When a valid request may fail: from the kill until the model is ready again, plus this margin
# for answers already on their way.
RESTART_MARGIN_S = 2.0


@dataclass(frozen=True)
class Outcome:
    valid: bool
    status: str
    """HTTP status code, or gRPC status name; "no answer" for a refused or dropped connection."""
    ok: bool
    server_error: bool


def _http(session: requests.Session, base: str, method: str, path: str, valid: bool, **kwargs: Any) -> Outcome:
    try:
        response = session.request(method, base + path, timeout=120, **kwargs)
        _ = response.content
    except requests.RequestException:
        return Outcome(valid, "no answer", False, True)
    return Outcome(valid, str(response.status_code), response.status_code < 300, response.status_code >= 500)


def _grpc(channel: grpc.Channel, rpc: str, request_type: str, response_type: str, message: dict[str, Any],
          valid: bool) -> Outcome:
    request = message_class(request_type)()
    fill_message(request, message)
    method = channel.unary_unary(f"/{SERVICE}/{rpc}", request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=message_class(response_type).FromString)
    try:
        method(request, timeout=120)
    except grpc.RpcError as error:
        code = error.code()
        server_error = code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
                                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS)
        return Outcome(valid, code.name, False, server_error)
    return Outcome(valid, "OK", True, False)


def _prompt_tensor(texts: list[bytes]) -> dict[str, Any]:
    return {"name": "prompt", "datatype": "BYTES", "shape": [len(texts), 1], "contents": {"bytes_contents": texts}}


def _int_param(value: int) -> dict[str, Any]:
    return {"int64_param": value}


# Each kind: (name, valid, weight, send(session, base, channel, rng) -> Outcome)
Sender = Callable[[requests.Session, str, grpc.Channel, random.Random], Outcome]


def _kinds() -> list[tuple[str, bool, int, Sender]]:
    def generate(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        body = {"prompt": f"soak {r.random()}", "steps": r.randint(1, 2), "seed": r.randint(0, 2**31)}
        return _http(s, b, "POST", GENERATE, True, json=body)

    def generate_stream(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        return _http(s, b, "POST", GENERATE + "_stream", True, json={"prompt": "soak stream", "steps": 2, "preview": 1})

    def infer_json(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]}],
                "parameters": {"steps": 1, "width": 16, "height": 8, "binary_data_output": True}}
        return _http(s, b, "POST", INFER, True, json=body)

    def images(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        return _http(s, b, "POST", "/v1/images/generations", True, json={"prompt": "soak", "size": "16x16", "steps": 1})

    def grpc_infer(_s: requests.Session, _b: str, c: grpc.Channel, r: random.Random) -> Outcome:
        message = {"model_name": FUZZ_MODEL, "inputs": [_prompt_tensor([b"soak grpc"])],
                   "parameters": {"steps": _int_param(r.randint(1, 2)), "seed": _int_param(r.randint(0, 99))}}
        return _grpc(c, "ModelInfer", "ModelInferRequest", "ModelInferResponse", message, True)

    def reads(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        path = r.choice(["/v2/health/ready", "/v2", f"/v2/models/{FUZZ_MODEL}", f"/v2/models/{FUZZ_MODEL}/config",
                         "/v2/models/stats", "/v1/models"])
        return _http(s, b, "GET", path, True)

    def malformed_json(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        data = r.choice([b'{"prompt": "x",', b"\xff\xfe", b"[1, 2", b"\f", b"nul\x00"])
        return _http(s, b, "POST", r.choice([GENERATE, INFER, "/v2/repository/index"]), False, data=data)

    def bad_parameters(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        body = r.choice([{"prompt": "x", "steps": 0}, {"prompt": "x", "width": 9}, {"prompt": "x", "seed": -1},
                         {"prompt": "x", "scheduler": "nope"}, {"prompt": 5}, {"prompt": ["a"] * 9},
                         {"prompt": "x", "guidance_scale": "high"}, {"prompt": "x", "stepz": 3}])
        return _http(s, b, "POST", GENERATE, False, json=body)

    def bad_tensors(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        body = r.choice([
            {"inputs": [{"name": "prompt", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]},
            {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [2**40, 1], "data": ["a"]}]},
            {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 99}}]},
            {"inputs": [{"name": "nope", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
        ])
        return _http(s, b, "POST", INFER, False, json=body)

    def unknown_routes(s: requests.Session, b: str, _c: grpc.Channel, r: random.Random) -> Outcome:
        path = r.choice(["/v2/models/nope/infer", "/v2/models/..%2F..%2Fetc/config", "/v3", "/v1/images/edits",
                         f"/v2/models/{FUZZ_MODEL}/versions/7/infer"])
        return _http(s, b, "POST" if "infer" in path or "edits" in path else "GET", path, False, json={})

    def grpc_invalid(_s: requests.Session, _b: str, c: grpc.Channel, r: random.Random) -> Outcome:
        message = r.choice([
            {"model_name": FUZZ_MODEL, "inputs": [{**_prompt_tensor([b"a"]), "datatype": "INT8"}]},
            {"model_name": FUZZ_MODEL, "inputs": [_prompt_tensor([b"a"])], "raw_input_contents": [b"\x01"]},
            {"model_name": "nope", "inputs": [_prompt_tensor([b"a"])]},
            {"model_name": FUZZ_MODEL, "inputs": [_prompt_tensor([b"a"])], "parameters": {"steps": _int_param(-4)}},
        ])
        return _grpc(c, "ModelInfer", "ModelInferRequest", "ModelInferResponse", message, False)

    return [
        ("generate", True, 4, generate), ("generate_stream", True, 1, generate_stream), ("infer_json", True, 2, infer_json),
        ("images", True, 1, images), ("grpc_infer", True, 3, grpc_infer), ("reads", True, 4, reads),
        ("malformed_json", False, 3, malformed_json), ("bad_parameters", False, 3, bad_parameters),
        ("bad_tensors", False, 2, bad_tensors), ("unknown_routes", False, 2, unknown_routes),
        ("grpc_invalid", False, 3, grpc_invalid),
    ]


@dataclass
class SoakResult:
    duration_s: float
    clients: int
    requests: int = 0
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    classes: Counter[str] = field(default_factory=Counter)
    memory: list[dict[str, Any]] = field(default_factory=list)
    backend_kills: list[dict[str, Any]] = field(default_factory=list)
    server_alive: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration_s": round(self.duration_s, 1), "clients": self.clients, "requests": self.requests,
            "classes": dict(self.classes), "by_kind": {k: dict(v) for k, v in sorted(self.by_kind.items())},
            "backend_kills": self.backend_kills, "server_alive": self.server_alive, "memory": self.memory,
        }


def _classify(outcome: Outcome, in_restart: bool) -> str:
    if outcome.valid:
        if outcome.ok:
            return "valid: succeeded"
        if in_restart:
            return "valid: failed during a backend restart"
        return "valid: failed (server error)" if outcome.server_error else "valid: rejected"
    if outcome.ok:
        return "invalid: accepted"
    if outcome.server_error:
        return "invalid: failed during a backend restart" if in_restart else "invalid: server error"
    return "invalid: rejected (4xx)"


def run_soak(http: str, grpc_address: str, server_pid: int, duration_s: float, clients: int,
             kill_backend_at: list[float], sample_every_s: float = 5.0, seed: int = 0,
             on_progress: Callable[[str], None] = print) -> SoakResult:
    """Runs the soak for `duration_s` against the server at `http` / `grpc_address`; SIGKILLs the
    backend at each of the `kill_backend_at` offsets (seconds) and times its return to ready."""
    base = f"http://{http}"
    result = SoakResult(duration_s=duration_s, clients=clients)
    lock = threading.Lock()
    restart_windows: list[list[float]] = []
    start = time.monotonic()
    deadline = start + duration_s
    kinds = _kinds()
    weights = [weight for _, _, weight, _ in kinds]

    def in_restart(sent: float, answered: float) -> bool:
        return any(s <= answered and sent <= e + RESTART_MARGIN_S for s, e in restart_windows)

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        session = requests.Session()
        with grpc.insecure_channel(grpc_address) as channel:
            while time.monotonic() < deadline:
                name, _valid, _w, send = rng.choices(kinds, weights)[0]
                sent = time.monotonic()
                outcome = send(session, base, channel, rng)
                answered = time.monotonic()
                with lock:
                    result.requests += 1
                    result.by_kind.setdefault(name, Counter())[outcome.status] += 1
                    result.classes[_classify(outcome, in_restart(sent, answered))] += 1

    def sample() -> None:
        m: MemorySample = sample_memory(server_pid)
        result.memory.append({"t_s": round(time.monotonic() - start, 1), "server_rss_mib": round(m.server / 2**20, 1),
                              "backend_rss_mib": round(m.backends / 2**20, 1), "backend_pids": list(m.backend_pids)})

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    sample()
    for thread in threads:
        thread.start()
    kills = sorted(kill_backend_at)
    next_sample = time.monotonic() + sample_every_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        if kills and now - start >= kills[0]:
            kills.pop(0)
            result.backend_kills.append(_kill_backend_and_wait(base, server_pid, start, restart_windows))
            on_progress(f"soak: backend kill {json.dumps(result.backend_kills[-1])}")
        if now >= next_sample:
            sample()
            next_sample += sample_every_s
            on_progress(f"soak: {now - start:.0f} s, {result.requests} requests, {dict(result.classes)}")
        time.sleep(0.2)
    for thread in threads:
        thread.join(timeout=180)
    sample()
    result.server_alive = is_alive(server_pid)
    return result


def _kill_backend_and_wait(base: str, server_pid: int, start: float, windows: list[list[float]]) -> dict[str, Any]:
    """SIGKILLs the backend, then waits for a new backend process and the model's readiness."""
    old = child_pids(server_pid)
    if not old:
        return {"error": "no backend process to kill"}
    killed_at = time.monotonic()
    window = [killed_at, float("inf")]
    windows.append(window)
    os.kill(old[0], signal.SIGKILL)
    ready_s = None
    while time.monotonic() - killed_at < 180:
        try:
            ready = requests.get(f"{base}/v2/models/{FUZZ_MODEL}/ready", timeout=5).status_code == 200
        except requests.RequestException:
            ready = False
        new = [pid for pid in child_pids(server_pid) if pid not in old]
        if ready and new:
            ready_s = time.monotonic() - killed_at
            break
        time.sleep(0.1)
    window[1] = time.monotonic()
    return {"at_s": round(killed_at - start, 1), "killed_pid": old[0], "new_pids": child_pids(server_pid),
            "ready_again_after_s": None if ready_s is None else round(ready_s, 2)}
