"""Access control and TLS with the official clients as peers: tritonclient (HTTP and gRPC) over
TLS with a certificate made at test time, and OpenAI's client passing its `api_key`."""
from __future__ import annotations

import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from sdserve_server import FIXTURE_REPOSITORY, ServerAddresses, make_repository, serving

API_KEY = "sk-sdserve-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A one-day certificate for 127.0.0.1 / localhost, made by the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]) -> Iterator[ServerAddresses]:
    cert, key = certificate
    repository = make_repository(tmp_path_factory.mktemp("security") / "repo", {"add_sub": FIXTURE_REPOSITORY / "add_sub"})
    with serving(repository, "--model-control-mode", "explicit", "--api-key", API_KEY,
                 "--http-ssl-cert", str(cert), "--http-ssl-key", str(key),
                 "--grpc-use-ssl", "--grpc-server-cert", str(cert), "--grpc-server-key", str(key)) as addresses:
        yield addresses


@pytest.fixture()
def http_client(server: ServerAddresses, certificate: tuple[Path, Path]) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http, ssl=True, ssl_options={"ca_certs": str(certificate[0])})
    yield client
    client.close()


@pytest.fixture()
def grpc_client(server: ServerAddresses, certificate: tuple[Path, Path]) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc, ssl=True, root_certificates=str(certificate[0]))
    yield client
    client.close()


def test_tritonclient_http_over_tls_needs_the_key(http_client: httpclient.InferenceServerClient) -> None:
    assert http_client.is_server_live(headers=AUTH)
    with pytest.raises(InferenceServerException, match="requires an API key"):
        http_client.get_server_metadata()
    with pytest.raises(InferenceServerException, match="not valid"):
        http_client.get_server_metadata(headers={"Authorization": "Bearer wrong-key"})


def test_tritonclient_http_loads_and_infers_with_the_key(http_client: httpclient.InferenceServerClient) -> None:
    http_client.load_model("add_sub", headers=AUTH)
    assert http_client.is_model_ready("add_sub", headers=AUTH)
    inputs = [httpclient.InferInput(name, [4], "FP32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
    result = http_client.infer("add_sub", inputs, headers=AUTH)
    assert result.as_numpy("OUTPUT0").tolist() == [0.0, 2.0, 4.0, 6.0]


def test_tritonclient_grpc_over_tls_needs_the_key(grpc_client: grpcclient.InferenceServerClient) -> None:
    assert grpc_client.is_server_live(headers={"authorization": f"Bearer {API_KEY}"})
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        grpc_client.get_server_metadata()


def test_openai_client_sends_its_api_key(server: ServerAddresses, certificate: tuple[Path, Path]) -> None:
    base_url = f"https://{server.http}/v1"
    def client(api_key: str) -> openai.OpenAI:
        http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(certificate[0])))
        return openai.OpenAI(base_url=base_url, api_key=api_key, http_client=http, max_retries=0)

    with client(API_KEY) as right:
        assert isinstance(right.models.list().data, list)
    with client("wrong-key") as wrong, pytest.raises(openai.AuthenticationError, match="not valid"):
        wrong.models.list()


def test_metrics_need_the_key(server: ServerAddresses, certificate: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    url = f"https://{server.metrics}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=context)
    assert refused.value.code == 401
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), context=context) as scrape:
        assert "nv_inference_request_success" in scrape.read().decode()
