"""Raw ctypes bindings to libbpf.so.1 (>= 1.0 semantics: NULL/negative errno on failure).

Only the functions bpfscope uses are declared; the friendly API is in object.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (CFUNCTYPE, POINTER, c_bool, c_char_p, c_int, c_size_t, c_uint, c_uint32, c_uint64,
                    c_void_p)


class BpfError(OSError):
    """Every failure of the BPF layer: errno text, and the verifier log on a failed load."""

    def __init__(self, errno_: int, what: str, log: str = ""):
        self.what = what
        self.log = log
        super().__init__(errno_, f"{what}: {os.strerror(errno_) if errno_ else 'failed'}")

    def __str__(self) -> str:
        text = super().__str__()
        if self.log:
            text += "\n" + self.log
        return text


def _load() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise BpfError(2, "libbpf.so.1 not found (install libbpf1 / libbpf-dev)")


lib = _load()
libc = ctypes.CDLL(None, use_errno=True)

# --- logging: libbpf's messages (the verifier log among them) are kept, not printed ---
_print_fn_t = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_log = threading.local()
_debug = bool(os.environ.get("BPFSCOPE_DEBUG"))
libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
libc.vsnprintf.restype = c_int


_print_buf = ctypes.create_string_buffer(1 << 20)  # a verifier log arrives as one message


@_print_fn_t
def _on_libbpf_print(level: int, fmt: bytes, args: int) -> int:
    # x86_64 passes va_list as a pointer, so vsnprintf can format it directly.
    buf = _print_buf
    libc.vsnprintf(buf, len(buf), fmt, args)
    if _debug:
        os.write(2, buf.value)
    if level > 0:  # keep warnings (the verifier log is one); info/debug only with BPFSCOPE_DEBUG
        return 0
    text = buf.value.decode(errors="replace")
    lines = getattr(_log, "lines", None)
    if lines is None:
        lines = _log.lines = []
    lines.append(text)
    del lines[:-400]
    return 0


lib.libbpf_set_print.argtypes = [_print_fn_t]
lib.libbpf_set_print.restype = c_void_p
lib.libbpf_set_print(_on_libbpf_print)


def take_log() -> str:
    """libbpf's messages since the last call (verifier log included), then forget them."""
    lines = getattr(_log, "lines", [])
    _log.lines = []
    return "".join(lines).rstrip()


def errno() -> int:
    return ctypes.get_errno()


def check_ptr(ptr, what: str):
    if not ptr:
        raise BpfError(errno() or 22, what, take_log())
    return ptr


def check_int(ret: int, what: str) -> int:
    if ret < 0:
        raise BpfError(-ret if ret != -1 else (errno() or 1), what, take_log())
    return ret


def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


obj_p = c_void_p
prog_p = c_void_p
map_p = c_void_p
link_p = c_void_p
btf_p = c_void_p

# object
bpf_object__open_file = _fn("bpf_object__open_file", obj_p, c_char_p, c_void_p)
bpf_object__load = _fn("bpf_object__load", c_int, obj_p)
bpf_object__close = _fn("bpf_object__close", None, obj_p)
bpf_object__next_program = _fn("bpf_object__next_program", prog_p, obj_p, prog_p)
bpf_object__next_map = _fn("bpf_object__next_map", map_p, obj_p, map_p)
bpf_object__btf = _fn("bpf_object__btf", btf_p, obj_p)
# programs
bpf_program__name = _fn("bpf_program__name", c_char_p, prog_p)
bpf_program__section_name = _fn("bpf_program__section_name", c_char_p, prog_p)
bpf_program__set_autoload = _fn("bpf_program__set_autoload", c_int, prog_p, c_bool)
bpf_program__autoload = _fn("bpf_program__autoload", c_bool, prog_p)
bpf_program__fd = _fn("bpf_program__fd", c_int, prog_p)
bpf_program__type = _fn("bpf_program__type", c_int, prog_p)
bpf_program__attach = _fn("bpf_program__attach", link_p, prog_p)
bpf_program__attach_perf_event = _fn("bpf_program__attach_perf_event", link_p, prog_p, c_int)
bpf_program__attach_tracepoint = _fn("bpf_program__attach_tracepoint", link_p, prog_p, c_char_p, c_char_p)
bpf_program__attach_raw_tracepoint = _fn("bpf_program__attach_raw_tracepoint", link_p, prog_p, c_char_p)
bpf_program__attach_uprobe_opts = _fn("bpf_program__attach_uprobe_opts", link_p, prog_p, c_int, c_char_p,
                                      c_size_t, c_void_p)
bpf_program__attach_cgroup = _fn("bpf_program__attach_cgroup", link_p, prog_p, c_int)
bpf_program__attach_iter = _fn("bpf_program__attach_iter", link_p, prog_p, c_void_p)
bpf_program__attach_xdp = _fn("bpf_program__attach_xdp", link_p, prog_p, c_int)
# links
bpf_link__destroy = _fn("bpf_link__destroy", c_int, link_p)
bpf_link__fd = _fn("bpf_link__fd", c_int, link_p)
bpf_link__pin = _fn("bpf_link__pin", c_int, link_p, c_char_p)
bpf_link__unpin = _fn("bpf_link__unpin", c_int, link_p)
bpf_iter_create = _fn("bpf_iter_create", c_int, c_int)
# maps (object level)
bpf_map__name = _fn("bpf_map__name", c_char_p, map_p)
bpf_map__fd = _fn("bpf_map__fd", c_int, map_p)
bpf_map__type = _fn("bpf_map__type", c_int, map_p)
bpf_map__key_size = _fn("bpf_map__key_size", c_uint32, map_p)
bpf_map__value_size = _fn("bpf_map__value_size", c_uint32, map_p)
bpf_map__max_entries = _fn("bpf_map__max_entries", c_uint32, map_p)
bpf_map__set_max_entries = _fn("bpf_map__set_max_entries", c_int, map_p, c_uint32)
bpf_map__btf_key_type_id = _fn("bpf_map__btf_key_type_id", c_uint32, map_p)
bpf_map__btf_value_type_id = _fn("bpf_map__btf_value_type_id", c_uint32, map_p)
bpf_map__initial_value = _fn("bpf_map__initial_value", c_void_p, map_p, POINTER(c_size_t))
bpf_map__pin = _fn("bpf_map__pin", c_int, map_p, c_char_p)
bpf_map__unpin = _fn("bpf_map__unpin", c_int, map_p, c_char_p)
bpf_map__reuse_fd = _fn("bpf_map__reuse_fd", c_int, map_p, c_int)
bpf_map__set_pin_path = _fn("bpf_map__set_pin_path", c_int, map_p, c_char_p)
# maps (fd level)
bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_elem = _fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
bpf_map_delete_elem = _fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
bpf_map_get_next_key = _fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
bpf_map_lookup_batch = _fn("bpf_map_lookup_batch", c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                           POINTER(c_uint32), c_void_p)
bpf_map_lookup_and_delete_batch = _fn("bpf_map_lookup_and_delete_batch", c_int, c_int, c_void_p, c_void_p,
                                      c_void_p, c_void_p, POINTER(c_uint32), c_void_p)
bpf_obj_pin = _fn("bpf_obj_pin", c_int, c_int, c_char_p)
bpf_obj_get = _fn("bpf_obj_get", c_int, c_char_p)
bpf_prog_get_next_id = _fn("bpf_prog_get_next_id", c_int, c_uint32, POINTER(c_uint32))
bpf_prog_get_fd_by_id = _fn("bpf_prog_get_fd_by_id", c_int, c_uint32)
bpf_link_get_next_id = _fn("bpf_link_get_next_id", c_int, c_uint32, POINTER(c_uint32))
bpf_obj_get_info_by_fd = _fn("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, POINTER(c_uint32))
libbpf_num_possible_cpus = _fn("libbpf_num_possible_cpus", c_int)
# ring buffer
ring_buffer_sample_fn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
ring_buffer__new = _fn("ring_buffer__new", c_void_p, c_int, ring_buffer_sample_fn, c_void_p, c_void_p)
ring_buffer__poll = _fn("ring_buffer__poll", c_int, c_void_p, c_int)
ring_buffer__consume = _fn("ring_buffer__consume", c_int, c_void_p)
ring_buffer__epoll_fd = _fn("ring_buffer__epoll_fd", c_int, c_void_p)
ring_buffer__free = _fn("ring_buffer__free", None, c_void_p)
# BTF
btf__type_by_id = _fn("btf__type_by_id", c_void_p, btf_p, c_uint32)
btf__name_by_offset = _fn("btf__name_by_offset", c_char_p, btf_p, c_uint32)
btf__find_by_name_kind = _fn("btf__find_by_name_kind", c_int, btf_p, c_char_p, c_uint32)
btf__load_vmlinux_btf = _fn("btf__load_vmlinux_btf", btf_p)
btf__free = _fn("btf__free", None, btf_p)
btf__type_cnt = _fn("btf__type_cnt", c_uint32, btf_p)


class UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts (libbpf >= 0.8); sz tells libbpf which fields we know."""
    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_uint64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


class BatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts."""
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info: enough for type, id and name."""
    _fields_ = [
        ("type", c_uint32), ("id", c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_uint32), ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64), ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64), ("created_by_uid", c_uint32), ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64), ("name", ctypes.c_char * 16),
    ]


c_uint = c_uint  # re-exported for callers building buffers
