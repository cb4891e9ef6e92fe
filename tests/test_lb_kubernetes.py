"""The Kubernetes reconciler: Service + EndpointSlice objects (the official client's models)
give the same kernel contents as the equivalent services.yaml."""

from __future__ import annotations

import pytest
from kubernetes import client

from bpfscope.lb.config import parse
from bpfscope.lb.kubernetes import services_from


def service(name, ns, cluster_ip, ports, annotations=None, type_="ClusterIP"):
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name, namespace=ns, annotations=annotations),
        spec=client.V1ServiceSpec(cluster_ip=cluster_ip, type=type_, ports=[
            client.V1ServicePort(name=n, port=p, protocol=proto) for n, p, proto in ports]))


def endpoint_slice(service_name, ns, ports, endpoints, suffix="a"):
    return client.V1EndpointSlice(
        address_type="IPv4",
        metadata=client.V1ObjectMeta(name=f"{service_name}-{suffix}", namespace=ns,
                                     labels={"kubernetes.io/service-name": service_name}),
        ports=[client.DiscoveryV1EndpointPort(name=n, port=p, protocol=proto) for n, p, proto in ports],
        endpoints=[client.V1Endpoint(addresses=[a], conditions=client.V1EndpointConditions(ready=r))
                   for a, r in endpoints])


def test_service_and_slices_give_the_same_services_as_the_file():
    svcs = [service("web", "shop", "127.77.0.1", [("http", 8080, "TCP")],
                    annotations={"bpfscope.io/algorithm": "weighted", "bpfscope.io/weight-127.0.0.3": "3"})]
    slices = [endpoint_slice("web", "shop", [("http", 9000, "TCP")], [("127.0.0.2", True), ("127.0.0.9", False)]),
              endpoint_slice("web", "shop", [("http", 9000, "TCP")], [("127.0.0.3", True)], suffix="b"),
              endpoint_slice("web", "other-namespace", [("http", 9000, "TCP")], [("127.0.0.4", True)])]
    from_k8s = services_from(svcs, slices)
    from_file = parse("""
services:
  - name: shop.web.http
    vip: 127.77.0.1
    port: 8080
    protocol: tcp
    algorithm: weighted
    backends:
      - {address: 127.0.0.2, port: 9000, weight: 1}
      - {address: 127.0.0.3, port: 9000, weight: 3}
""").services
    assert from_k8s == from_file  # the not-ready endpoint and the other namespace's slice are out


def test_ports_protocols_headless_and_rate_limit_annotation():
    svcs = [service("dns", "kube-system", "127.77.0.10", [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
                    annotations={"bpfscope.io/rate-limit": "100/10"}),
            service("headless", "kube-system", "None", [("x", 1, "TCP")]),
            service("sctp", "kube-system", "127.77.0.11", [("s", 9, "SCTP")])]
    slices = [endpoint_slice("dns", "kube-system", [("dns", 5353, "UDP"), ("dns-tcp", 5353, "TCP")],
                             [("127.0.0.5", True)])]
    got = {s.name: s for s in services_from(svcs, slices)}
    assert set(got) == {"kube-system.dns.dns", "kube-system.dns.dns-tcp"}
    assert got["kube-system.dns.dns"].protocol == "udp" and got["kube-system.dns.dns-tcp"].protocol == "tcp"
    assert [b.port for b in got["kube-system.dns.dns"].backends] == [5353]
    assert got["kube-system.dns.dns"].rate_limit.per_second == 100 and got["kube-system.dns.dns"].rate_limit.burst == 10


def test_bad_annotation_is_a_clear_error():
    from bpfscope.lb.config import ConfigError

    svcs = [service("web", "d", "127.77.0.1", [("http", 80, "TCP")], annotations={"bpfscope.io/rate-limit": "fast"})]
    with pytest.raises(ConfigError, match="bpfscope.io/rate-limit"):
        services_from(svcs, [])


def test_session_affinity_and_least_conn():
    svcs = [service("api", "d", "127.77.0.1", [("http", 80, "TCP"), ("q", 81, "UDP")],
                    annotations={"bpfscope.io/algorithm": "least-conn"})]
    svcs[0].spec.session_affinity = "ClientIP"
    svcs[0].spec.session_affinity_config = client.V1SessionAffinityConfig(
        client_ip=client.V1ClientIPConfig(timeout_seconds=60))
    got = {s.name: s for s in services_from(svcs, [])}
    tcp, udp = got["d.api.http"], got["d.api.q"]
    assert (tcp.algorithm, udp.algorithm) == ("least-conn", "random")  # least-conn counts TCP connections
    assert (tcp.affinity.by, tcp.affinity.timeout) == ("netns", 60.0) and udp.affinity.timeout == 60.0
    svcs[0].spec.session_affinity_config = None
    assert services_from(svcs, [])[0].affinity.timeout == 10800.0


def test_getpeername_annotation_applies_to_tcp_ports_only():
    from bpfscope.lb.config import ConfigError

    svcs = [service("dns", "d", "127.77.0.10", [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
                    annotations={"bpfscope.io/getpeername": "backend"})]
    got = {s.name: s.getpeername for s in services_from(svcs, [])}
    assert got == {"d.dns.dns": "vip", "d.dns.dns-tcp": "backend"}  # udp replies must come from the VIP
    svcs = [service("web", "d", "127.77.0.1", [("http", 80, "TCP")], annotations={"bpfscope.io/getpeername": "pod"})]
    with pytest.raises(ConfigError, match="bpfscope.io/getpeername"):
        services_from(svcs, [])
