"""bpfscope net's pure parts, each alone: label decoders, the record codec, filters, owners."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from bpfscope.decode import drop_reason_name, inet_addr, port_class, tcp_ca_state_name, tcp_state_name, tcp_state_number
from bpfscope.exporters.net import ConnFilter, Owners, tcp_values
from bpfscope.exporters.net_kernel import struct_codec


def test_inet_addr_reads_ipv4_from_the_first_four_bytes():
    assert inet_addr(bytes([127, 0, 0, 1]) + bytes(12), 2) == "127.0.0.1"


def test_inet_addr_formats_ipv6_compressed():
    assert inet_addr(bytes(15) + b"\x01", 10) == "::1"
    assert inet_addr(bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]), 10) == "::ffff:127.0.0.1"


@pytest.mark.parametrize("nr,name", [(1, "ESTABLISHED"), (2, "SYN_SENT"), (6, "TIME_WAIT"), (10, "LISTEN"),
                                     (8, "CLOSE_WAIT"), (99, "state_99")])
def test_tcp_state_names_follow_the_kernel_numbering(nr, name):
    assert tcp_state_name(nr) == name


@pytest.mark.parametrize("typed,nr", [("ESTABLISHED", 1), ("established", 1), ("estab", 1), ("listen", 10),
                                      ("fin-wait-1", 4), ("time_wait", 6), ("nope", None)])
def test_tcp_state_number_accepts_kernel_and_ss_names(typed, nr):
    assert tcp_state_number(typed) == nr


def test_ca_state_names():
    assert [tcp_ca_state_name(i) for i in range(5)] == ["Open", "Disorder", "CWR", "Recovery", "Loss"]
    assert tcp_ca_state_name(9) == "ca_9"


def test_port_class_is_bounded():
    assert port_class(22) == "22" and port_class(1023) == "1023"
    assert port_class(5432) == "registered" and port_class(50000) == "ephemeral"
    assert len({port_class(p) for p in range(65536)}) == 1024 + 2


def test_drop_reason_name_uses_the_table_and_never_a_bare_number():
    assert drop_reason_name(5, {5: "NETFILTER_DROP"}) == "NETFILTER_DROP"
    assert drop_reason_name(7, {}) == "reason_7"


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="kernel has no BTF")
def test_drop_reasons_come_from_the_running_kernels_btf():
    from bpfscope.decode import drop_reasons

    names = drop_reasons()
    assert "NETFILTER_DROP" in names.values() and "NO_SOCKET" in names.values()
    assert all(not n.startswith("SKB_DROP_REASON_") for n in names.values())


def test_struct_codec_matches_a_ctypes_layout_with_padding():
    class S(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("a", ctypes.c_uint64), ("comm", ctypes.c_char * 16), ("b", ctypes.c_uint16),
                    ("_pad0", ctypes.c_uint8 * 6), ("addr", ctypes.c_uint8 * 16)]

    codec, names = struct_codec(S)
    s = S(a=7, comm=b"curl", b=443)
    s.addr[0] = 10
    tup = codec.unpack(bytes(s))
    assert codec.size == ctypes.sizeof(S) and names == ["a", "comm", "b", "addr"]  # padding skipped
    assert dict(zip(names, tup))["a"] == 7 and dict(zip(names, tup))["b"] == 443
    assert dict(zip(names, tup))["comm"].rstrip(b"\0") == b"curl"
    assert list(struct.iter_unpack(codec.format, bytes(s) * 3))[2] == tup


def test_struct_codec_merges_adjacent_arrays_into_one_item():
    class S(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("comm", ctypes.c_char * 16), ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16),
                    ("port", ctypes.c_uint16)]

    codec, names = struct_codec(S, merge_arrays=True)
    assert names == [(("comm", 16), ("saddr", 16), ("daddr", 16)), "port"]
    assert codec.unpack(bytes(S(comm=b"x", port=5)))[1] == 5


def _info(**kw) -> dict:
    base = dict(pid=0, tid=0, comm="", dir=0, owner_src=0, netns=1, sport=40000, dport=80, state=1, saddr="127.0.0.1",
                daddr="127.0.0.2", cookie=9, family=2)
    base.update(kw)
    return base


def test_filter_matches_every_given_field():
    info = _info(pid=5, comm="curl", sport=40000, dport=80)
    assert ConnFilter().match(5, "curl", info, "out")
    assert ConnFilter(pid=5, comm="curl", port=80, addr="127.0.0.0/24", state=1, direction="out").match(
        5, "curl", info, "out")
    assert not ConnFilter(pid=6).match(5, "curl", info, "out")
    assert not ConnFilter(port=81).match(5, "curl", info, "out")
    assert not ConnFilter(addr="10.0.0.0/8").match(5, "curl", info, "out")
    assert ConnFilter(addr="127.0.0.2").match(5, "curl", info, "out")
    assert not ConnFilter(direction="in").match(5, "curl", info, "out")
    assert not ConnFilter(state=10).match(5, "curl", info, "out")


def test_filter_addr_matches_ipv4_mapped_ipv6():
    info = _info(saddr="::ffff:127.0.0.1", daddr="::ffff:127.0.0.1", family=10)
    assert ConnFilter(addr="127.0.0.1").match(None, None, info, "in")


def test_owners_infer_direction_and_owner_from_listeners():
    owners = Owners()
    owners.learn([_info(pid=100, comm="server", state=10, sport=8080, dport=0, dir=2, owner_src=1)])
    # accepted before bpfscope started, never used since: the listener's owner, direction in
    assert owners.resolve(_info(sport=8080, dport=50000)) == (100, None, "server", "in", "listener")
    # a connection the kernel attributed stays as it was
    assert owners.resolve(_info(pid=7, tid=8, comm="curl", dir=1, owner_src=1)) == (7, 8, "curl", "out", "syscall")
    # older than bpfscope and no listener on its local port: we called out
    assert owners.resolve(_info(pid=9, comm="ssh", owner_src=3))[3] == "out"


def test_tcp_values_derive_slow_start_and_delivery_rate():
    info = {k: 0 for k in ("bytes_acked", "bytes_received", "bytes_sent", "bytes_retrans", "segs_in", "segs_out",
                           "snd_wnd", "rcv_wnd", "snd_cwnd", "snd_ssthresh", "srtt_us", "rttvar_us", "min_rtt_us",
                           "total_retrans", "retrans_out", "lost_out", "sacked_out", "packets_out", "mss",
                           "rate_delivered", "rate_interval_us", "sndbuf", "wmem_queued", "rcvbuf", "rmem_alloc",
                           "send_q", "recv_q")}
    info.update(snd_cwnd=10, snd_ssthresh=2**31 - 1, rate_delivered=100, mss=1000, rate_interval_us=1000)
    v = tcp_values(info)
    assert v["in_slow_start"] == 1
    assert v["delivery_rate_bytes_per_s"] == 100 * 1000 * 1_000_000 // 1000
