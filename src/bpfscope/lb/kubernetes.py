"""Kubernetes as the source of services: ClusterIP:port -> the ready endpoints of its
EndpointSlices, with policies from annotations. The reconciler is a pure function of
the API objects (the official client's models), so the same map contents come out of a
Service + EndpointSlice as out of the equivalent services.yaml.

Annotations on a Service:
  bpfscope.io/algorithm: random | weighted | least-conn   (weighted: every endpoint weight
                                                1 unless bpfscope.io/weight-<ip> gives another;
                                                least-conn: tcp ports, udp ones stay random)
  bpfscope.io/rate-limit: "<per second>[/<burst>]"
  bpfscope.io/getpeername: vip | backend   (backend: tcp ports record nothing per socket)
spec.sessionAffinity ClientIP becomes `affinity: {by: netns}` (a pod is a network
namespace) with sessionAffinityConfig.clientIP.timeoutSeconds (default 10800).
"""

from __future__ import annotations

import re
import threading

from .config import Affinity, Backend, ConfigError, RateLimit, Service
from .kernel import LbKernel

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ANNOTATION = "bpfscope.io/"


def _name(namespace: str, service: str, port_name: str | None, port: int) -> str:
    """A service name within the 31 characters and the alphabet the maps take."""
    raw = f"{namespace}.{service}.{port_name or port}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", raw)[:31]


def _rate_limit(text: str | None) -> RateLimit | None:
    if not text:
        return None
    per_second, _, burst = text.partition("/")
    try:
        return RateLimit(per_second=int(per_second), burst=int(burst) if burst else None)
    except ValueError:
        raise ConfigError(f"annotation {ANNOTATION}rate-limit: {text!r} is not '<per second>[/<burst>]'") from None


def services_from(k8s_services: list, slices: list) -> list[Service]:
    """Service objects + EndpointSlice objects -> the services the kernel should hold."""
    by_service: dict[tuple[str, str], list] = {}
    for s in slices:
        labels = s.metadata.labels or {}
        if SERVICE_NAME_LABEL in labels:
            by_service.setdefault((s.metadata.namespace, labels[SERVICE_NAME_LABEL]), []).append(s)
    out = []
    for svc in k8s_services:
        spec, meta = svc.spec, svc.metadata
        if not spec or not spec.cluster_ip or spec.cluster_ip == "None" or spec.type == "ExternalName":
            continue  # headless and external-name services have no VIP to balance
        notes = meta.annotations or {}
        algorithm = notes.get(f"{ANNOTATION}algorithm", "random")
        limit = _rate_limit(notes.get(f"{ANNOTATION}rate-limit"))
        affinity = _affinity(spec)
        peer = notes.get(f"{ANNOTATION}getpeername", "vip")
        if peer not in ("vip", "backend"):
            raise ConfigError(f"annotation {ANNOTATION}getpeername: {peer!r} is not vip or backend")
        for port in spec.ports or []:
            protocol = (port.protocol or "TCP").lower()
            if protocol not in ("tcp", "udp"):
                continue
            backends = []
            for es in by_service.get((meta.namespace, meta.name), []):
                target = next((p for p in es.ports or [] if p.name == port.name and
                               (p.protocol or "TCP").lower() == protocol), None)
                if target is None or target.port is None:
                    continue
                for ep in es.endpoints or []:
                    ready = ep.conditions is None or ep.conditions.ready is not False
                    if not ready:
                        continue
                    for address in ep.addresses or []:
                        weight = int(notes.get(f"{ANNOTATION}weight-{address}", "1"))
                        backends.append(Backend(address=address, port=target.port, weight=weight))
            backends.sort(key=lambda b: (b.address, b.port))
            out.append(Service(name=_name(meta.namespace, meta.name, port.name, port.port), vip=spec.cluster_ip,
                               port=port.port, protocol=protocol, backends=backends, rate_limit=limit,
                               algorithm="random" if protocol == "udp" and algorithm == "least-conn" else algorithm,
                               affinity=affinity, getpeername="vip" if protocol == "udp" else peer))
    return out


def _affinity(spec) -> Affinity | None:
    if spec.session_affinity != "ClientIP":
        return None
    cfg = spec.session_affinity_config
    timeout = (cfg.client_ip.timeout_seconds if cfg and cfg.client_ip else None) or 10800
    return Affinity(by="netns", timeout=timeout)


class KubernetesSource:
    """List Services and EndpointSlices, then follow both with watches; apply on every change.

    Not tested against a real API server: none can be installed on our machines (the
    reconciler above is tested with the client's models)."""

    def __init__(self, kernel: LbKernel, kubeconfig: str | None = None):
        from kubernetes import client, config

        if kubeconfig:
            config.load_kube_config(kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        self.core = client.CoreV1Api()
        self.discovery = client.DiscoveryV1Api()
        self.kernel = kernel
        self.services: dict[str, object] = {}
        self.slices: dict[str, object] = {}
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def _apply(self) -> None:
        with self._lock:
            self.kernel.apply(services_from(list(self.services.values()), list(self.slices.values())))

    def _follow(self, list_fn, store: dict) -> None:
        from kubernetes import watch

        while not self.stop.is_set():
            listed = list_fn()
            with self._lock:
                store.clear()
                store.update({f"{o.metadata.namespace}/{o.metadata.name}": o for o in listed.items})
            self._apply()
            w = watch.Watch()
            try:
                for event in w.stream(list_fn, resource_version=listed.metadata.resource_version,
                                      timeout_seconds=300):
                    obj = event["object"]
                    key = f"{obj.metadata.namespace}/{obj.metadata.name}"
                    with self._lock:
                        if event["type"] == "DELETED":
                            store.pop(key, None)
                        else:
                            store[key] = obj
                    self._apply()
                    if self.stop.is_set():
                        break
            except Exception:  # an expired resource version or a dropped watch: list again
                continue
            finally:
                w.stop()

    def run(self) -> int:
        threads = [threading.Thread(target=self._follow, args=(fn, store), daemon=True) for fn, store in (
            (self.core.list_service_for_all_namespaces, self.services),
            (self.discovery.list_endpoint_slice_for_all_namespaces, self.slices))]
        for t in threads:
            t.start()
        self.stop.wait()
        return 0
