"""Static checks of the deployment files: docker-compose.yml, Dockerfile, .dockerignore,
prometheus/prometheus.yml, grafana/provisioning and deploy/kubernetes.

What is NOT run here, because Docker cannot run on these machines (only its client is
installed): `docker build` (so the apt-get installs, `make -C bpf` with a vmlinux.h from the
build host's BTF, the `pip install .` and the runtime stage's imports were never executed
inside the image), `docker compose up` (no container was started; the Grafana image, its
Infinity plugin install and the provisioning were never loaded by a real Grafana), and no
Kubernetes API server ever saw the manifests (no admission, no scheduling, no hostPath
mounts). What IS checked: the YAML parses; every service, mount, port and referenced file is
consistent with the repository, this machine and the CLI defaults; every apt package of
the Dockerfile is known to this machine's Debian 12 (the base image's release);
prometheus.yml passes the real `promtool check config`; the Kubernetes manifests
deserialize into the `kubernetes` client's (pydantic) models without unknown fields.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from bpfscope.dashboards.common import panels

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROMETHEUS_YML = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
DATASOURCES = yaml.safe_load((REPO / "grafana/provisioning/datasources/bpfscope.yml").read_text())["datasources"]
DASHBOARD_PROVIDERS = yaml.safe_load((REPO / "grafana/provisioning/dashboards/bpfscope.yml").read_text())["providers"]
K8S_DIR = REPO / "deploy/kubernetes"


# ---- helpers --------------------------------------------------------------------------

def _mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of every short-syntax volume of a compose service."""
    out = []
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        out.append((source, target, mode[0] if mode else "rw"))
    return out


def _host_path(service: dict, container_path: str) -> Path | None:
    """The repository path a container path of a service comes from, through its bind mounts."""
    for source, target, _ in _mounts(service):
        if source.startswith(".") and (container_path == target or container_path.startswith(target + "/")):
            return (REPO / source / container_path[len(target):].lstrip("/")).resolve()
    return None


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _targets(job: str) -> list[str]:
    (config,) = [c for c in PROMETHEUS_YML["scrape_configs"] if c["job_name"] == job]
    return [t for sc in config["static_configs"] for t in sc["targets"]]


def _dockerfile_stages() -> list[dict]:
    """[{name, base, instructions: [(KEYWORD, args)]}] of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            stages.append({"base": m.group(1), "name": m.group(2), "instructions": []})
        else:
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore (the plain patterns this repository uses) excludes a context path."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a dir pattern excludes its files
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def _apt_packages(run_args: str) -> list[str]:
    """The packages of the `apt-get install` of a RUN instruction."""
    tokens = shlex.split(run_args)
    if "apt-get" not in tokens or "install" not in tokens[tokens.index("apt-get"):]:
        return []
    start = tokens.index("install", tokens.index("apt-get")) + 1
    after = tokens[start:]
    return [t for t in after[: after.index("&&") if "&&" in after else None] if not t.startswith("-")]


# ---- docker compose -------------------------------------------------------------------

def test_compose_has_the_three_services():
    assert set(SERVICES) == {"bpfscope", "prometheus", "grafana"}
    for name, service in SERVICES.items():
        assert service.get("network_mode") == "host", name


def test_bpfscope_service_is_privileged_with_host_pid_and_the_bpf_mounts():
    svc = SERVICES["bpfscope"]
    assert svc["build"] == "."
    assert svc["privileged"] is True and svc["pid"] == "host"
    mounts = {target: (source, mode) for source, target, mode in _mounts(svc)}
    for path in ("/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf", "/sys/fs/cgroup"):
        assert mounts[path][0] == path, path
    assert mounts["/sys/kernel/btf"][1] == "ro"
    assert mounts["/host/proc"] == ("/proc", "ro")
    data_volume = mounts["/var/lib/bpfscope"][0]
    assert data_volume in COMPOSE["volumes"], "the database lives in a named volume"


def test_every_bind_mounted_path_exists():
    for name, service in SERVICES.items():
        for source, target, _ in _mounts(service):
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} (mounted on {target}) is not in the repository"
            elif source.startswith("/"):
                assert Path(source).exists(), f"{name}: host path {source} does not exist on this machine"
            else:
                assert source in COMPOSE.get("volumes", {}), f"{name}: named volume {source} is not declared"


def test_images_are_pinned():
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", SERVICES["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:11\.6\.\d+", SERVICES["grafana"]["image"])
    plugins = SERVICES["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert re.fullmatch(r"yesoreyeram-infinity-datasource \d+\.\d+\.\d+", plugins), "Infinity, pinned"


def test_ports_agree_between_compose_prometheus_the_dockerfile_and_the_cli_defaults():
    from bpfscope import cli

    command = SERVICES["bpfscope"]["command"]
    listen_port = _port(_flag(command, "--listen"))
    metrics_port = int(_flag(command, "--metrics-port"))
    assert listen_port == _port(cli.DEFAULT_LISTEN)
    assert metrics_port == inspect.signature(cli.up).parameters["metrics_port"].default
    assert _targets("bpfscope-collector") == [f"127.0.0.1:{listen_port}"]
    assert _targets("bpfscope-exporters") == [f"127.0.0.1:{metrics_port + i}" for i in range(5)]
    assert PROMETHEUS_YML["global"]["scrape_interval"] == "15s"
    cmd = next(json.loads(args) for kw, args in _dockerfile_stages()[-1]["instructions"] if kw == "CMD")
    assert _port(_flag(cmd, "--listen")) == listen_port and int(_flag(cmd, "--metrics-port")) == metrics_port
    assert _flag(cmd, "--db") == _flag(command, "--db")


def test_grafana_datasources_point_at_prometheus_and_the_collector():
    from bpfscope.dashboards.common import INFINITY_UID, PROMETHEUS_UID

    by_uid = {d["uid"]: d for d in DATASOURCES}
    prom_listen = next(a for a in SERVICES["prometheus"]["command"] if a.startswith("--web.listen-address="))
    assert by_uid[PROMETHEUS_UID]["type"] == "prometheus"
    assert by_uid[PROMETHEUS_UID]["url"] == "http://" + prom_listen.split("=", 1)[1]
    infinity = by_uid[INFINITY_UID]
    assert infinity["type"] == "yesoreyeram-infinity-datasource"
    collector_url = f"http://127.0.0.1:{_port(_flag(SERVICES['bpfscope']['command'], '--listen'))}"
    assert infinity["url"] == collector_url
    assert collector_url in infinity["jsonData"]["allowedHosts"]


def test_grafana_finds_the_dashboards_and_its_home_dashboard():
    grafana = SERVICES["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    provisioning = _host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == (REPO / "grafana/provisioning").resolve()
    (provider,) = DASHBOARD_PROVIDERS
    dashboards_dir = _host_path(grafana, provider["options"]["path"])
    assert dashboards_dir == (REPO / "grafana/dashboards").resolve()
    home = _host_path(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None and home.exists(), "home dashboard file"
    assert json.loads(home.read_text())["uid"] == "bpfscope-overview"
    used = {t["datasource"]["uid"] for f in dashboards_dir.glob("*.json")
            for p in panels(json.loads(f.read_text())) for t in p.get("targets", [])}
    assert used <= {d["uid"] for d in DATASOURCES}, "every datasource a dashboard uses is provisioned"


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian's prometheus package) not installed")
def test_prometheus_config_passes_promtool():
    r = subprocess.run(["promtool", "check", "config", str(REPO / "prometheus/prometheus.yml")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Dockerfile -----------------------------------------------------------------------

def test_dockerfile_is_multi_stage_with_clang_only_in_the_build_stage():
    build, runtime = _dockerfile_stages()
    assert (build["base"], build["name"]) == ("debian:bookworm", "build")
    assert runtime["base"] == "debian:bookworm-slim"
    build_runs = " ".join(a for kw, a in build["instructions"] if kw == "RUN")
    for needed in ("clang-19", "llvm-19", "libbpf-dev", "bpftool", "make", "python3-venv", "make -C bpf",
                   "/opt/bpfscope", "install"):
        assert needed in build_runs, needed
    runtime_runs = " ".join(a for kw, a in runtime["instructions"] if kw == "RUN")
    assert "clang" not in runtime_runs and "llvm" not in runtime_runs and "make" not in runtime_runs.split()
    for needed in ("python3", "libbpf1", "libelf1"):
        assert needed in runtime_runs.split(), needed
    assert ("COPY", "--from=build /opt/bpfscope /opt/bpfscope") in runtime["instructions"]
    assert ("ENTRYPOINT", '["bpfscope"]') in runtime["instructions"]


def test_dockerfile_copies_existing_files_that_dockerignore_keeps():
    copied = []
    for stage in _dockerfile_stages():
        for keyword, args in stage["instructions"]:
            if keyword in ("COPY", "ADD") and not args.startswith("--from"):
                copied += args.split()[:-1]
    assert copied, "the build stage copies the sources"
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not _dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    for needed in ("bpf/sys.bpf.c", "bpf/Makefile", "src/bpfscope/cli.py", "pyproject.toml", "README.md"):
        assert not _dockerignored(needed), needed
    # a local vmlinux.h or stale objects must not leak in: the build stage regenerates them
    assert _dockerignored("bpf/include/vmlinux.h") and _dockerignored("src/bpfscope/bpf/obj/sys.bpf.o")


@pytest.mark.skipif(not shutil.which("apt-cache"), reason="needs apt-cache (Debian)")
def test_dockerfile_apt_packages_exist_in_debian_12():
    if "bookworm" not in Path("/etc/os-release").read_text():
        pytest.skip("this machine is not Debian 12, the release of the base images")
    packages = [p for stage in _dockerfile_stages() for kw, args in stage["instructions"] if kw == "RUN"
                for p in _apt_packages(args)]
    assert "clang-19" in packages and "libbpf1" in packages
    for package in packages:
        policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False).stdout
        assert "Candidate:" in policy and "Candidate: (none)" not in policy, f"{package} is not in Debian 12"


# ---- Kubernetes -----------------------------------------------------------------------

def _k8s_objects() -> list[dict]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _model(doc: dict):
    """The manifest as a kubernetes client model (pydantic: types and required fields checked)."""
    from kubernetes.client import ApiClient

    group_version = doc["apiVersion"].split("/")[-1]
    klass = f"{group_version.capitalize()}{doc['kind']}"
    api = ApiClient()
    model = api.deserialize(json.dumps(doc), klass, "application/json")
    return model, api.sanitize_for_serialization(model)


def _unknown_fields(original, serialized, path: str = "") -> list[str]:
    # The models drop keys they do not know (a typo like hostPid would vanish silently).
    if isinstance(original, dict):
        out = []
        for key, value in original.items():
            if not isinstance(serialized, dict) or key not in serialized:
                out.append(f"{path}.{key}")
            else:
                out += _unknown_fields(value, serialized[key], f"{path}.{key}")
        return out
    if isinstance(original, list):
        return [f for o, s in zip(original, serialized, strict=True) for f in _unknown_fields(o, s, path + "[]")]
    return []


def _by_kind() -> dict[str, object]:
    return {doc["kind"]: _model(doc)[0] for doc in _k8s_objects()}


def test_k8s_manifests_are_valid_objects_without_unknown_fields():
    kinds = []
    for doc in _k8s_objects():
        model, serialized = _model(doc)
        assert model.kind == doc["kind"] and model.api_version == doc["apiVersion"]
        assert _unknown_fields(doc, serialized) == [], f"{doc['kind']}: fields the API does not know"
        kinds.append((doc["apiVersion"], doc["kind"]))
    assert sorted(kinds) == sorted([("v1", "Namespace"), ("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment"),
                                    ("v1", "Service"), ("apps/v1", "DaemonSet")])


def test_k8s_objects_live_in_the_namespace():
    objs = _by_kind()
    namespace = objs["Namespace"].metadata.name
    assert objs["Namespace"].metadata.labels["pod-security.kubernetes.io/enforce"] == "privileged"
    for kind, obj in objs.items():
        if kind != "Namespace":
            assert obj.metadata.namespace == namespace, kind


def test_agent_daemonset_is_privileged_on_the_host_and_reaches_the_collector_service():
    objs = _by_kind()
    ds, svc = objs["DaemonSet"], objs["Service"]
    pod = ds.spec.template.spec
    assert pod.host_pid and pod.host_network and pod.dns_policy == "ClusterFirstWithHostNet"
    assert ds.spec.selector.match_labels.items() <= ds.spec.template.metadata.labels.items()
    (container,) = pod.containers
    assert container.security_context.privileged is True
    host_paths = {v.name: v.host_path.path for v in pod.volumes}
    mounts = {m.mount_path: (host_paths[m.name], bool(m.read_only)) for m in container.volume_mounts}
    for path in ("/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf", "/sys/fs/cgroup"):
        assert mounts[path][0] == path, path
    assert mounts["/host/proc"] == ("/proc", True) and mounts["/sys/kernel/btf"][1] is True
    annotations = ds.spec.template.metadata.annotations
    metrics_port = int(_flag(container.args, "--metrics-port"))
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == metrics_port
    assert container.args[0] == "sys"
    service_port = svc.spec.ports[0].port
    assert _flag(container.args, "--collector") == (
        f"http://{svc.metadata.name}.{svc.metadata.namespace}.svc.cluster.local:{service_port}")
    env = {e.name: e.value_from.field_ref.field_path for e in container.env}
    assert env["BPFSCOPE_HOST"] == "spec.nodeName"


def test_collector_deployment_service_and_claim_fit_together():
    objs = _by_kind()
    deploy, svc, pvc = objs["Deployment"], objs["Service"], objs["PersistentVolumeClaim"]
    pod_labels = deploy.spec.template.metadata.labels
    assert deploy.spec.selector.match_labels.items() <= pod_labels.items()
    assert svc.spec.selector.items() <= pod_labels.items(), "the Service selects the collector pods"
    (container,) = deploy.spec.template.spec.containers
    assert container.args[0] == "collector"
    listen_port = _port(_flag(container.args, "--listen"))
    ports = {p.name: p.container_port for p in container.ports}
    assert svc.spec.ports[0].target_port in (listen_port, *[n for n, p in ports.items() if p == listen_port])
    assert int(deploy.spec.template.metadata.annotations["prometheus.io/port"]) == listen_port
    claims = {v.name: v.persistent_volume_claim.claim_name for v in deploy.spec.template.spec.volumes}
    (mount,) = container.volume_mounts
    assert claims[mount.name] == pvc.metadata.name
    db_path = _flag(container.args, "--db").removeprefix("sqlite:///")
    assert db_path.startswith(mount.mount_path + "/"), "the SQLite file is on the claim"
    assert deploy.spec.replicas == 1 and deploy.spec.strategy.type == "Recreate", "SQLite: one writer"
    assert "sqlite:" not in " ".join(container.args) or pvc.spec.access_modes == ["ReadWriteOnce"]
