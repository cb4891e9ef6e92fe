"""BPF objects, programs, links and maps over libbpf (ctypes).

    with BpfObject.open("sys", rodata={"target_tgid": 42}) as obj:
        obj.attach_all()
        for key, val in obj.maps["counts"].items(): ...

Links are file descriptors owned by this process: they go away when the object is
closed, and the kernel drops them too when the process dies (even on SIGKILL).
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from . import libbpf as L
from .btf import Btf, to_python
from .perf import perf_event_open_cpu_clock, online_cpus

OBJ_DIR = Path(os.environ.get("BPFSCOPE_BPF_DIR", Path(__file__).parent / "obj"))

# enum bpf_map_type values that matter for reading
MAP_HASH, MAP_ARRAY, MAP_PERCPU_HASH, MAP_PERCPU_ARRAY = 1, 2, 5, 6
MAP_LRU_HASH, MAP_LRU_PERCPU_HASH, MAP_RINGBUF = 9, 10, 27
_PERCPU = (MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH, 21)  # 21: percpu cgroup storage
_ARRAYS = (MAP_ARRAY, MAP_PERCPU_ARRAY)
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2


def object_path(name: str) -> Path:
    path = Path(name)
    if path.suffix != ".o":
        path = OBJ_DIR / f"{name}.bpf.o"
    if not path.exists():
        raise L.BpfError(2, f"BPF object {path} not found (build it with `make -C bpf`)")
    return path


def _copy(ctype: type, array, i: int):
    """Element i of a ctypes array as a detached value (ints come back as Python ints)."""
    if issubclass(ctype, ctypes._SimpleCData):
        return ctype(array[i])
    return ctype.from_buffer_copy(array[i])


def prog_info(fd: int) -> L.ProgInfo:
    info = L.ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    L.check_int(L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read program info")
    return info


def prog_exists(prog_id: int) -> bool:
    """Is a program with this id still loaded anywhere in the kernel?"""
    fd = L.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return False
    os.close(fd)
    return True


def links_held(pid: int) -> int:
    """How many BPF links process `pid` holds: its attached programs, seen from /proc."""
    count = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf_link"
        except OSError:
            continue
    return count


def wait_for_links(proc, at_least: int = 1, timeout_s: float = 30.0) -> bool:
    """True once the subprocess `proc` holds `at_least` BPF links; False if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if links_held(proc.pid) >= at_least:
            return True
        time.sleep(0.05)
    return False


class Link:
    def __init__(self, ptr: int, what: str):
        self.ptr = ptr
        self.what = what

    @property
    def fd(self) -> int:
        return L.bpf_link__fd(self.ptr)

    def pin(self, path: str) -> None:
        L.check_int(L.bpf_link__pin(self.ptr, path.encode()), f"pin link {self.what} at {path}")

    def unpin(self) -> None:
        L.check_int(L.bpf_link__unpin(self.ptr), f"unpin link {self.what}")

    def destroy(self) -> None:
        if self.ptr:
            L.bpf_link__destroy(self.ptr)
            self.ptr = None


class Program:
    def __init__(self, obj: "BpfObject", ptr: int):
        self.obj = obj
        self.ptr = ptr
        self.name = L.bpf_program__name(ptr).decode()
        self.section = L.bpf_program__section_name(ptr).decode()

    @property
    def fd(self) -> int:
        return L.bpf_program__fd(self.ptr)

    @property
    def id(self) -> int:
        """The kernel's id of the loaded program (what `bpftool prog show` lists)."""
        return prog_info(self.fd).id

    @property
    def autoload(self) -> bool:
        return L.bpf_program__autoload(self.ptr)

    @autoload.setter
    def autoload(self, on: bool) -> None:
        L.check_int(L.bpf_program__set_autoload(self.ptr, on), f"set autoload of {self.name}")

    def _link(self, ptr: int, what: str) -> Link:
        link = Link(L.check_ptr(ptr, f"attach {self.name} ({what})"), what)
        self.obj.links.append(link)
        return link

    def attach(self) -> Link:
        """Attach by section name (tracepoint/, raw_tp/, tp_btf/, uprobe/bin:sym, iter/...)."""
        return self._link(L.bpf_program__attach(self.ptr), self.section)

    def attach_tracepoint(self, group: str, name: str) -> Link:
        return self._link(L.bpf_program__attach_tracepoint(self.ptr, group.encode(), name.encode()),
                          f"tracepoint {group}:{name}")

    def attach_raw_tracepoint(self, name: str) -> Link:
        return self._link(L.bpf_program__attach_raw_tracepoint(self.ptr, name.encode()), f"raw_tp {name}")

    def attach_uprobe(self, binary: str, symbol: str, pid: int = -1, retprobe: bool = False,
                      offset: int | None = None) -> Link:
        """By symbol name, or at a file offset when given (symbol then only names the link)."""
        opts = L.UprobeOpts(sz=ctypes.sizeof(L.UprobeOpts), retprobe=retprobe,
                            func_name=None if offset is not None else symbol.encode())
        what = f"{'uretprobe' if retprobe else 'uprobe'} {binary}:{symbol}"
        return self._link(L.bpf_program__attach_uprobe_opts(self.ptr, pid, binary.encode(), offset or 0,
                                                            ctypes.byref(opts)), what)

    def attach_perf_event(self, freq_hz: int, cpus: list[int] | None = None) -> list[Link]:
        """Sample with the software cpu-clock at freq_hz on every online CPU (works without a PMU)."""
        return [self.attach_perf_fd(perf_event_open_cpu_clock(cpu, freq_hz), f"perf_event on cpu {cpu}")
                for cpu in (cpus if cpus is not None else online_cpus())]

    def attach_perf_fd(self, pfd: int, what: str) -> Link:
        """Attach to an open perf event; the link owns its fd from then on (destroying the
        link, or closing the object, closes it). On failure the fd is closed here."""
        ptr = L.bpf_program__attach_perf_event(self.ptr, pfd)
        if not ptr:
            err = L.errno()
            os.close(pfd)
            raise L.BpfError(err or 22, f"attach {self.name} to {what}", L.take_log())
        return self._link(ptr, what)

    def attach_cgroup(self, cgroup_path: str) -> Link:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._link(L.bpf_program__attach_cgroup(self.ptr, fd), f"cgroup {cgroup_path}")
        finally:
            os.close(fd)

    def attach_iter(self) -> Link:
        return self._link(L.bpf_program__attach_iter(self.ptr, None), f"iter {self.section}")

    def run_iter(self) -> bytes:
        """Attach an iterator program, run it once and return what it wrote (bpf_seq_printf/write)."""
        link = self.attach_iter()
        try:
            fd = L.check_int(L.bpf_iter_create(link.fd), f"create iterator {self.name}")
            chunks = []
            try:
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            return b"".join(chunks)
        finally:
            link.destroy()
            self.obj.links.remove(link)

    def attach_xdp(self, ifindex: int) -> Link:
        return self._link(L.bpf_program__attach_xdp(self.ptr, ifindex), f"xdp ifindex {ifindex}")


class Map:
    """A BPF map: typed keys and values from BTF, batch reads where the kernel allows."""

    def __init__(self, obj: "BpfObject | None", ptr: int | None, btf: Btf | None = None):
        self.obj = obj
        self.ptr = ptr
        self.name = L.bpf_map__name(ptr).decode()
        self.btf = btf
        self._key_t = self._val_t = None

    # --- geometry ---
    @property
    def fd(self) -> int:
        return L.bpf_map__fd(self.ptr)

    @property
    def type(self) -> int:
        return L.bpf_map__type(self.ptr)

    @property
    def key_size(self) -> int:
        return L.bpf_map__key_size(self.ptr)

    @property
    def value_size(self) -> int:
        return L.bpf_map__value_size(self.ptr)

    @property
    def max_entries(self) -> int:
        return L.bpf_map__max_entries(self.ptr)

    @max_entries.setter
    def max_entries(self, n: int) -> None:
        L.check_int(L.bpf_map__set_max_entries(self.ptr, n), f"resize map {self.name}")

    @property
    def percpu(self) -> bool:
        return self.type in _PERCPU

    @property
    def ncpus(self) -> int:
        return L.libbpf_num_possible_cpus() if self.percpu else 1

    def _btf_type(self, type_id: int, size: int) -> type:
        if self.btf and type_id:
            t = self.btf.ctype(type_id)
            if ctypes.sizeof(t) == size:
                return t
        return ctypes.c_uint8 * size

    @property
    def key_type(self) -> type:
        if self._key_t is None:
            self._key_t = self._btf_type(L.bpf_map__btf_key_type_id(self.ptr), self.key_size)
        return self._key_t

    @property
    def value_type(self) -> type:
        """One value; per-CPU maps hold an array of these, one per possible CPU, 8-byte aligned."""
        if self._val_t is None:
            t = self._btf_type(L.bpf_map__btf_value_type_id(self.ptr), self.value_size)
            if self.percpu:
                stride = (self.value_size + 7) // 8 * 8
                if stride != ctypes.sizeof(t):
                    pad = ctypes.c_uint8 * (stride - self.value_size)
                    t = type(t.__name__ + "_aligned", (ctypes.Structure,),
                             {"_pack_": 1, "_fields_": [("v", t), ("_pad", pad)]})
                t = t * self.ncpus
            self._val_t = t
        return self._val_t

    @staticmethod
    def cpu_values(value) -> list:
        """A per-CPU value as a list with one entry per CPU (padding wrappers removed)."""
        return [getattr(c, "v", c) for c in value]

    def _key(self, key):
        if isinstance(key, int) and not isinstance(key, bool) and self.key_type is not None:
            kt = self.key_type
            if issubclass(kt, ctypes._SimpleCData):
                return kt(key)
            return (ctypes.c_uint8 * self.key_size).from_buffer_copy(key.to_bytes(self.key_size, "little"))
        if isinstance(key, (bytes, bytearray)):
            return (ctypes.c_uint8 * self.key_size).from_buffer_copy(key)
        return key

    # --- single elements ---
    def lookup(self, key):
        """The raw ctypes value (per-CPU maps: an array with one entry per CPU), or None."""
        val = self.value_type()
        ret = L.bpf_map_lookup_elem(self.fd, ctypes.byref(self._key(key)), ctypes.byref(val))
        if ret < 0:
            if L.errno() == 2:
                return None
            L.check_int(ret, f"lookup in map {self.name}")
        return val

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        if isinstance(value, int) and issubclass(self.value_type, ctypes._SimpleCData):
            value = self.value_type(value)
        elif isinstance(value, (bytes, bytearray)):
            value = (ctypes.c_uint8 * len(value)).from_buffer_copy(value)
        L.check_int(L.bpf_map_update_elem(self.fd, ctypes.byref(self._key(key)), ctypes.byref(value), flags),
                    f"update map {self.name}")

    def delete(self, key) -> bool:
        ret = L.bpf_map_delete_elem(self.fd, ctypes.byref(self._key(key)))
        if ret < 0 and L.errno() == 2:
            return False
        L.check_int(ret, f"delete from map {self.name}")
        return True

    def keys(self):
        kt = self.key_type
        prev, cur = None, kt()
        while True:
            ret = L.bpf_map_get_next_key(self.fd, ctypes.byref(prev) if prev is not None else None,
                                         ctypes.byref(cur))
            if ret < 0:
                if L.errno() == 2:
                    return
                L.check_int(ret, f"iterate map {self.name}")
            yield cur
            prev, cur = cur, kt()

    def items(self):
        """(key, value) pairs, one syscall per key; prefer batch() for large maps."""
        for key in self.keys():
            val = self.lookup(key)
            if val is not None:
                yield key, val

    def batch(self, delete: bool = False, chunk: int = 4096) -> list[tuple]:
        """Every (key, value) in a few syscalls; with delete=True the entries are removed as read
        (hash maps), giving per-interval deltas without a race against the kernel's updates."""
        if self.type in _ARRAYS and delete:
            raise L.BpfError(22, f"map {self.name}: arrays cannot be read-and-deleted")
        fn = L.bpf_map_lookup_and_delete_batch if delete else L.bpf_map_lookup_batch
        kt, vt = self.key_type, self.value_type
        keys, vals = (kt * chunk)(), (vt * chunk)()
        in_b, out_b = ctypes.c_uint8 * max(self.key_size, 8), ctypes.c_uint8 * max(self.key_size, 8)
        token_in, token_out = in_b(), out_b()
        opts = L.BatchOpts(sz=ctypes.sizeof(L.BatchOpts))
        out, first = [], True
        while True:
            count = ctypes.c_uint32(chunk)
            ret = fn(self.fd, None if first else ctypes.byref(token_in), ctypes.byref(token_out),
                     keys, vals, ctypes.byref(count), ctypes.byref(opts))
            err = L.errno() if ret < 0 else 0
            if ret < 0 and err != 2:
                L.check_int(ret, f"batch {'lookup-and-delete' if delete else 'lookup'} in map {self.name}")
            for i in range(count.value):
                out.append((_copy(kt, keys, i), _copy(vt, vals, i)))
            if err == 2:  # ENOENT: the last chunk
                break
            ctypes.memmove(token_in, token_out, ctypes.sizeof(token_in))
            first = False
        return out

    def decoded(self, delete: bool = False) -> list[tuple]:
        """batch() as plain Python: (key dict/int, value dict/int or a list per CPU)."""
        rows = []
        for k, v in self.batch(delete=delete):
            if self.percpu:
                rows.append((to_python(k), [to_python(c) for c in self.cpu_values(v)]))
            else:
                rows.append((to_python(k), to_python(v)))
        return rows

    def pin(self, path: str) -> None:
        L.check_int(L.bpf_map__pin(self.ptr, path.encode()), f"pin map {self.name} at {path}")

    def unpin(self, path: str) -> None:
        L.check_int(L.bpf_map__unpin(self.ptr, path.encode()), f"unpin map {self.name} at {path}")

    def reuse_pinned(self, path: str) -> bool:
        """Before load: use the map pinned at path (if any) instead of creating a new one."""
        try:
            fd = L.check_int(L.bpf_obj_get(path.encode()), f"open pinned {path}")
        except L.BpfError:
            return False
        try:
            L.check_int(L.bpf_map__reuse_fd(self.ptr, fd), f"reuse pinned map {path}")
        finally:
            os.close(fd)
        return True


class PinnedMap(Map):
    """A map pinned on bpffs by an earlier run, typed by the same map of an opened (not
    loaded) object: how a controller edits kernel state that outlives it."""

    def __init__(self, template: Map, path: str):
        super().__init__(template.obj, template.ptr, template.btf)
        self.path = path
        self._fd = L.check_int(L.bpf_obj_get(path.encode()), f"open pinned map {path}")

    @property
    def fd(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BpfObject:
    """One compiled .bpf.o: open, configure (.rodata, map sizes, autoload), load, attach."""

    def __init__(self, path: Path):
        self.path = path
        self.ptr = L.check_ptr(L.bpf_object__open_file(str(path).encode(), None), f"open {path}")
        self.links: list[Link] = []
        self.btf = Btf(L.bpf_object__btf(self.ptr))
        self.programs: dict[str, Program] = {}
        p = L.bpf_object__next_program(self.ptr, None)
        while p:
            prog = Program(self, p)
            self.programs[prog.name] = prog
            p = L.bpf_object__next_program(self.ptr, p)
        self.maps: dict[str, Map] = {}
        m = L.bpf_object__next_map(self.ptr, None)
        while m:
            mp = Map(self, m, self.btf)
            self.maps[mp.name] = mp
            m = L.bpf_object__next_map(self.ptr, m)
        self.loaded = False

    @classmethod
    def open(cls, name: str, rodata: dict | None = None, load: bool = True,
             max_entries: dict[str, int] | None = None, only: list[str] | None = None) -> "BpfObject":
        obj = cls(object_path(name))
        try:
            for map_name, n in (max_entries or {}).items():
                obj.maps[map_name].max_entries = n
            if only is not None:
                for prog in obj.programs.values():
                    prog.autoload = prog.name in only
            if rodata:
                obj.set_rodata(**rodata)
            if load:
                obj.load()
        except BaseException:
            obj.close()
            raise
        return obj

    def struct(self, name: str) -> type:
        """The ctypes view of a struct declared in the object's C (e.g. a ring-buffer event)."""
        from .btf import KIND_STRUCT
        return self.btf.ctype(self.btf.find(name, KIND_STRUCT))

    def _rodata_map(self) -> Map:
        for m in self.maps.values():
            if m.name.endswith(".rodata"):
                return m
        raise L.BpfError(22, f"{self.path.name} has no .rodata (no const volatile globals)")

    def set_rodata(self, **values) -> None:
        """Set `const volatile` globals before load (configuration the verifier sees as constants)."""
        if self.loaded:
            raise L.BpfError(16, "set .rodata after load")
        m = self._rodata_map()
        size = ctypes.c_size_t()
        base = L.check_ptr(L.bpf_map__initial_value(m.ptr, ctypes.byref(size)), "read .rodata")
        layout = self.btf.datasec_vars(".rodata")
        for name, value in values.items():
            if name not in layout:
                raise L.BpfError(22, f"{self.path.name}: no const volatile global {name!r}")
            off, sz, tid = layout[name]
            ct = self.btf.ctype(tid)
            if isinstance(value, (bytes, str)):
                raw = value.encode() if isinstance(value, str) else value
                ctypes.memmove(base + off, raw[:sz].ljust(sz, b"\0"), sz)
            else:
                ct.from_address(base + off).value = value

    def load(self) -> None:
        L.take_log()
        L.check_int(L.bpf_object__load(self.ptr), f"load {self.path.name}")
        self.loaded = True

    def attach_all(self) -> list[Link]:
        """Attach every loaded program that libbpf can attach from its section name alone."""
        return [p.attach() for p in self.programs.values() if p.autoload]

    def close(self) -> None:
        for link in self.links:
            link.destroy()
        self.links.clear()
        if self.ptr:
            L.bpf_object__close(self.ptr)
            self.ptr = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
