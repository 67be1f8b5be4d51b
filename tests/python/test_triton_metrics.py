"""The Prometheus metrics port: Triton's per-model counters and sdserve's own, scraped after real requests."""
from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from sdserve_server import ServerAddresses, serve_tiny_sd_and_add_sub

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    yield from serve_tiny_sd_and_add_sub(tmp_path_factory, "metrics")


@pytest.fixture(scope="module")
def client(server: ServerAddresses) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.http)
    yield client
    client.close()


def scrape(server: ServerAddresses) -> tuple[str, Samples]:
    """The content type and every sample of `GET /metrics`, keyed by name and label set."""
    with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=30) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples: Samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(LABEL.findall(match.group("labels") or ""))
            samples[(match.group("name"), labels)] = float(match.group("value"))
    return content_type, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def add_sub(client: httpclient.InferenceServerClient, datatype: str = "FP32") -> None:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [4], datatype)
        tensor.set_data_from_numpy(np.ones(4, dtype=np.float32 if datatype == "FP32" else np.int32))
        inputs.append(tensor)
    client.infer("add_sub", inputs)


def generate(client: httpclient.InferenceServerClient, count: int) -> None:
    prompt = httpclient.InferInput("prompt", [count, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([["a lighthouse"]] * count, dtype=object))
    client.infer("tiny_sd", [prompt], parameters={"steps": 1, "seed": 1})


def test_triton_counters_follow_the_requests(server: ServerAddresses, client: httpclient.InferenceServerClient) -> None:
    _, before = scrape(server)
    add_sub(client)
    add_sub(client)
    content_type, after = scrape(server)
    assert content_type.startswith("text/plain")
    labels = {"model": "add_sub", "version": "1"}
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count"):
        assert value(after, name, **labels) - value(before, name, **labels) == 2, name
    assert value(after, "nv_inference_request_duration_us", **labels) > value(before, "nv_inference_request_duration_us", **labels)


def test_counters_equal_the_statistics_extension(server: ServerAddresses, client: httpclient.InferenceServerClient) -> None:
    add_sub(client)
    _, samples = scrape(server)
    (stats,) = client.get_inference_statistics("add_sub", "1")["model_stats"]
    labels = {"model": "add_sub", "version": "1"}
    infer = stats["inference_stats"]
    assert value(samples, "nv_inference_request_success", **labels) == infer["success"]["count"]
    assert value(samples, "nv_inference_request_failure", **labels) == infer["fail"]["count"]
    assert value(samples, "nv_inference_count", **labels) == stats["inference_count"]
    assert value(samples, "nv_inference_exec_count", **labels) == stats["execution_count"]
    for metric, stage in (("request_duration", "success"), ("queue_duration", "queue"),
                          ("compute_input_duration", "compute_input"), ("compute_infer_duration", "compute_infer"),
                          ("compute_output_duration", "compute_output")):
        assert value(samples, f"nv_inference_{metric}_us", **labels) == infer[stage]["ns"] // 1000, metric


def test_sdserve_counts_images_and_executions_per_batch_size(server: ServerAddresses, client: httpclient.InferenceServerClient) -> None:
    _, before = scrape(server)
    generate(client, 2)
    generate(client, 1)
    _, after = scrape(server)
    tiny = {"model": "tiny_sd", "version": "1"}
    assert value(after, "sdserve_images_generated_total", **tiny) - value(before, "sdserve_images_generated_total", **tiny) == 3
    for batch_size in ("1", "2"):
        name, labels = "sdserve_batch_executions_total", {**tiny, "batch_size": batch_size}
        assert value(after, name, **labels) - value(before, name, **labels) == 1, batch_size
    assert ("sdserve_images_generated_total", frozenset({"model": "add_sub", "version": "1"}.items())) not in after
    assert value(after, "sdserve_backend_restarts_total", **tiny) == 0
    assert ("sdserve_backend_restarts_total", frozenset(tiny.items())) in after


def test_gpu_memory_is_reported_only_where_nvidia_smi_exists(server: ServerAddresses) -> None:
    _, samples = scrape(server)
    gpu_samples = [name for name, _ in samples if name.startswith("sdserve_gpu_memory_")]
    if shutil.which("nvidia-smi"):
        assert {"sdserve_gpu_memory_used_bytes", "sdserve_gpu_memory_total_bytes"} <= set(gpu_samples)
    else:
        assert gpu_samples == []


def test_only_get_metrics_is_served(server: ServerAddresses) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://{server.metrics}/v2/health/live", timeout=30)
    assert caught.value.code == 404


def test_compute_statistics_split_the_compute_time_into_its_stages(
    server: ServerAddresses, client: httpclient.InferenceServerClient
) -> None:
    # compute_input: the core encoding the request for its backend; compute_output: decoding the
    # response's tensors; compute_infer: the rest, the backend's. Each is measured, none is zero.
    generate(client, 2)
    (stats,) = client.get_inference_statistics("tiny_sd", "1")["model_stats"]
    infer = stats["inference_stats"]
    for stage in ("compute_input", "compute_infer", "compute_output"):
        assert infer[stage]["count"] == infer["success"]["count"] > 0, stage
        assert int(infer[stage]["ns"]) > 0, stage
    assert int(infer["compute_infer"]["ns"]) > int(infer["compute_input"]["ns"]) + int(infer["compute_output"]["ns"])
    for batch in stats["batch_stats"]:
        assert int(batch["compute_input"]["ns"]) > 0 and int(batch["compute_output"]["ns"]) > 0, batch
