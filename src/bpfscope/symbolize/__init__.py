"""Addresses -> function names: kernel frames from /proc/kallsyms, user frames from the
ELF symbol tables of the files a process maps (/proc/PID/maps; PIE and shared
libraries; files inside containers through /proc/PID/root; deleted files through
/proc/PID/map_files), JIT code from /tmp/perf-PID.map. Symbol tables are cached per
file (device, inode, size, mtime) and per GNU build id, so one library mapped by many
processes, or by many containers, is read once.

User stacks taken as (GNU build id, file offset) frames (BPF_F_STACK_BUILD_ID: the
kernel resolves each frame while the process runs) are named without the process: the
build id leads to a file already read (any process's, this one's own libraries), to the
files the process maps while it lives, or to the file it exec'd (recorded by the kernel
side), so the frames of a process that exited before its maps were read are named too;
its frames the kernel gave as addresses only are named through where its build-id
stacks showed each file was mapped.

A frame that cannot be named is `module+0xoffset` (file offset in that module), never a
bare address: `[anon]+0x...` for anonymous executable memory, `[build-id <id>]+0x...` for
a file no process showed us, `[unknown]+0x...` for an address no mapping covers (a
plain-address frame of a process that had exited before its maps were read).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from .elf import ElfError, ElfSymbols, elf_from_bytes, read_build_id, read_elf
from .kallsyms import Kallsyms
from .procmaps import Mapping, PerfMap, ProcessMaps, ns_pid

KERNEL_SUFFIX = "_[k]"  # flamegraph.pl's annotation of kernel frames
_BPF_FRAMES = ("bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__bpf_prog_")

__all__ = ["KERNEL_SUFFIX", "Kallsyms", "Mapping", "PerfMap", "ProcessMaps", "Symbolizer", "read_elf"]


class Symbolizer:
    def __init__(self, proc: str = "/proc", kallsyms_path: str = "/proc/kallsyms"):
        self.proc = proc
        self.kallsyms_path = kallsyms_path
        self._kallsyms: Kallsyms | None = None
        self._maps: dict[int, ProcessMaps | None] = {}
        self._old_maps: dict[int, ProcessMaps | None] = {}
        self._perf_maps: dict[int, PerfMap | None] = {}
        self._files: dict[tuple, tuple[int, ElfSymbols | None]] = {}  # file key -> (small id, symbols)
        self._by_build_id: dict[str, ElfSymbols] = {}
        self._frames: dict[int, dict[int, str]] = {}  # pid -> addr -> frame, while its maps are unchanged
        self._mapping_files: dict[tuple, tuple] = {}  # (pid, start, inode) -> (file id, symbols), this interval
        self._named: dict[tuple, str] = {}  # (file id, file offset) -> frame, kept across intervals
        self._by_build_id_file: dict[str, tuple[str, tuple]] = {}  # build id -> (module name, (file id, symbols))
        self._execs: dict[int, str] = {}  # pid -> the file it exec'd (from the kernel side)
        self._vdsos: dict[int, int] = {}  # pid -> where its vDSO was mapped (from the kernel side)
        self._vdso: tuple[int, ElfSymbols | None] | None = None  # (size, symbols) of this kernel's vDSO
        self._learned: set[int] = set()  # pids whose files were searched for build ids, this interval
        self._bases: dict[int, set[tuple[str, int]]] = {}  # pid -> {(build id, address - file offset)}
        self.elf_reads = 0  # files whose symbol tables were parsed (cache misses)

    # ---- kernel -------------------------------------------------------------------------
    @property
    def kallsyms(self) -> Kallsyms:
        if self._kallsyms is None:
            self._kallsyms = Kallsyms(self.kallsyms_path)
        return self._kallsyms

    def kernel_frame(self, addr: int) -> str:
        name = self.kallsyms.lookup(addr)
        return (name or f"[kernel]+0x{addr:x}") + KERNEL_SUFFIX

    def kernel_stack(self, ips: Iterable[int]) -> list[str]:
        """Frames leaf first; return addresses are looked up one byte back (the call). The
        leaf frames of the BPF program that took the stack (bpf_prog_*, bpf_trace_run*) are
        left out: they are the observer, not the observed."""
        frames = [self.kernel_frame(ip - 1 if i else ip) for i, ip in enumerate(ips)]
        i = 0
        while i < len(frames) - 1 and frames[i].startswith(_BPF_FRAMES):
            i += 1
        return frames[i:]

    # ---- user ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Forget per-process state (maps change: dlopen, exec); called once per interval.
        The last maps of a process that has exited stay usable for its late samples, and
        the named frames of a process whose maps did not change are kept."""
        if len(self._old_maps) > 4096:  # bounded: pids of long-gone processes
            self._old_maps.clear()
            self._frames = {pid: f for pid, f in self._frames.items() if pid in self._maps}
        self._old_maps.update((pid, m) for pid, m in self._maps.items() if m is not None)
        for pid, perf in self._perf_maps.items():
            if perf is not None:  # a JIT rewrites its map: do not trust yesterday's names
                self._frames.pop(pid, None)
        if sum(len(f) for f in self._frames.values()) > 2_000_000:
            self._frames.clear()
        self._maps.clear()
        self._perf_maps.clear()
        self._mapping_files.clear()
        self._learned.clear()
        if len(self._execs) > 65536:
            self._execs.clear()
            self._vdsos.clear()
        if len(self._bases) > 65536:
            self._bases.clear()

    def process_maps(self, pid: int) -> ProcessMaps | None:
        if pid not in self._maps:
            try:
                maps = ProcessMaps(pid, self.proc)
            except OSError:
                maps = None
            old = self._old_maps.get(pid)
            if maps is None or not maps.mappings:  # gone, or a zombie (its maps are empty)
                maps = old or maps
            elif old is None or old.mappings != maps.mappings:
                self._frames.pop(pid, None)  # exec, dlopen, munmap: names may differ now
            self._maps[pid] = maps
        return self._maps[pid]

    def _perf_map(self, pid: int) -> PerfMap | None:
        if pid not in self._perf_maps:
            path = f"{self.proc}/{pid}/root/tmp/perf-{ns_pid(pid, self.proc)}.map"
            try:
                self._perf_maps[pid] = PerfMap(path)
            except OSError:
                self._perf_maps[pid] = None
        return self._perf_maps[pid]

    def elf(self, path: str) -> ElfSymbols | None:
        """The symbols of an ELF file, cached per (dev, inode, size, mtime) and per build id."""
        return self._elf_keyed(path)[1]

    def _elf_keyed(self, path: str, name: str | None = None) -> tuple[int | None, ElfSymbols | None]:
        """(small file id, symbols) of the file at path; its build id, when it has one,
        then leads to it (under `name`, the module's name in frames: the path's basename
        by default)."""
        try:
            st = os.stat(path)
        except OSError:
            return None, None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._files.get(key)
        if hit is not None:
            return hit
        syms = None
        build_id = read_build_id(path)
        if build_id and build_id in self._by_build_id:
            syms = self._by_build_id[build_id]
        else:
            try:
                syms = read_elf(path)
                self.elf_reads += 1
            except (OSError, ElfError, struct.error, ValueError):
                syms = None
            if syms is not None and syms.build_id:
                self._by_build_id[syms.build_id] = syms
        hit = self._files[key] = (len(self._files), syms)
        if build_id and build_id not in self._by_build_id_file:
            self._by_build_id_file[build_id] = (name or os.path.basename(path), hit)
        return hit

    def _mapping_elf(self, pid: int, maps: ProcessMaps, m: Mapping) -> tuple[int | None, ElfSymbols | None]:
        """The file behind a mapping, resolved once per interval per (pid, mapping)."""
        mkey = (pid, m.start, m.inode)
        hit = self._mapping_files.get(mkey)
        if hit is None:
            hit = self._elf_keyed(maps.open_path(m), os.path.basename(m.path))
            if hit[1] is None and not m.deleted:
                # the process has exited: the same file seen from here, if it is the same inode
                try:
                    same = os.stat(m.path).st_ino == m.inode
                except OSError:
                    same = False
                if same:
                    hit = self._elf_keyed(m.path)
            self._mapping_files[mkey] = hit
        return hit

    def user_frame(self, pid: int, addr: int) -> str:
        frames = self._frames.get(pid)
        if frames is None or pid not in self._maps:
            self.process_maps(pid)  # once per interval: drops the cache if the maps changed
            frames = self._frames.setdefault(pid, {})
        cached = frames.get(addr)
        if cached is None:
            cached = frames[addr] = self._user_frame(pid, addr)
        return cached

    def _user_frame(self, pid: int, addr: int) -> str:
        maps = self.process_maps(pid)
        m = maps.find(addr) if maps else None
        if m is None or not m.is_file:
            perf = self._perf_map(pid)
            name = perf.lookup(addr) if perf else None
            if name:
                return name
            if m is None:  # the maps are gone
                return self._frame_of_known_base(pid, addr) or self._vdso_frame(pid, addr) or f"[unknown]+0x{addr:x}"
            return f"{m.path or '[anon]'}+0x{m.file_offset(addr):x}"
        off = m.file_offset(addr)
        fkey, syms = self._mapping_elf(pid, maps, m)
        if fkey is not None:
            named = self._named.get((fkey, off))  # the same file and offset: the same name, in any process
            if named is not None:
                return named
        frame = None
        if syms is not None:
            vaddr = syms.file_offset_to_vaddr(off)
            if vaddr is not None:
                hit = syms.lookup(vaddr)
                if hit:
                    frame = hit[0]
        if frame is None:
            frame = f"{os.path.basename(m.path)}+0x{off:x}"
        if fkey is not None:
            if len(self._named) > 2_000_000:
                self._named.clear()
            self._named[(fkey, off)] = frame
        return frame

    def user_stack(self, pid: int, ips: Iterable[int]) -> list[str]:
        """Frames leaf first; return addresses are looked up one byte back (the call)."""
        return [self.user_frame(pid, ip - 1 if i else ip) for i, ip in enumerate(ips)]

    # ---- user, build-id frames ----------------------------------------------------------
    def note_exec(self, pid: int, path: str, vdso: int = 0) -> None:
        """The file process pid exec'd (as execve() was given it), and where its vDSO is."""
        self._execs[pid] = path
        if vdso:
            self._vdsos[pid] = vdso

    def _own_vdso(self) -> tuple[int, ElfSymbols | None]:
        """(size, symbols) of the vDSO, read from this process's own copy (the kernel maps
        one image into every process)."""
        if self._vdso is None:
            self._vdso = (0, None)
            try:
                with open(f"{self.proc}/self/maps") as f:
                    line = next(ln for ln in f if ln.rstrip().endswith("[vdso]"))
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                with open(f"{self.proc}/self/mem", "rb") as mem:
                    mem.seek(lo)
                    data = mem.read(hi - lo)
                self._vdso = (hi - lo, None)
                self._vdso = (hi - lo, elf_from_bytes(data))
            except (OSError, StopIteration, ValueError, ElfError, struct.error):
                pass
        return self._vdso

    def _vdso_frame(self, pid: int, addr: int) -> str | None:
        """A frame in the vDSO of a process whose maps are gone, or None."""
        base = self._vdsos.get(pid)
        if base is None or addr < base:
            return None
        size, syms = self._own_vdso()
        if addr - base >= size:
            return None
        hit = syms.lookup(addr - base) if syms else None
        return hit[0] if hit else f"[vdso]+0x{addr - base:x}"

    def _learn_build_ids(self, pid: int) -> None:
        """Read the build ids of the files that might hold pid's frames (once per interval
        per pid): the files it maps (live, or its last maps), the file it exec'd, and this
        process's own (libc, ld.so: the libraries most processes share)."""
        if pid in self._learned:
            return
        self._learned.add(pid)
        for who in (pid, os.getpid()):
            maps = self.process_maps(who)
            for m in maps.mappings if maps else ():
                if m.is_file:
                    self._mapping_elf(who, maps, m)
        path = self._execs.get(pid)
        if path:
            if not os.path.isabs(path):  # relative to its working directory, while it lives
                path = os.path.join(f"{self.proc}/{pid}/cwd", path)
            self._elf_keyed(path)

    def build_id_frame(self, pid: int, build_id: str, off: int) -> str:
        """The frame at file offset `off` of the file with this GNU build id."""
        hit = self._by_build_id_file.get(build_id)
        if hit is None:
            self._learn_build_ids(pid)
            hit = self._by_build_id_file.get(build_id)
        if hit is None:
            return f"[build-id {build_id[:16]}]+0x{off:x}"
        module, (fkey, syms) = hit
        named = self._named.get((fkey, off))
        if named is not None:
            return named
        frame = None
        if syms is not None:
            vaddr = syms.file_offset_to_vaddr(off)
            hit = syms.lookup(vaddr) if vaddr is not None else None
            if hit:
                frame = hit[0]
        if frame is None:
            frame = f"{module}+0x{off:x}"
        if len(self._named) > 2_000_000:
            self._named.clear()
        self._named[(fkey, off)] = frame
        return frame

    def user_stack_build_id(self, pid: int, frames: Iterable[tuple[int, str, int]]) -> list[str]:
        """Frames leaf first from (status, build id, file offset or address) entries; a
        status other than VALID (1) carries an address, named through the process's maps.
        Return addresses are looked up one byte back (the call)."""
        out = []
        for i, (status, build_id, value) in enumerate(frames):
            value = value - 1 if i else value
            if status == 1:
                out.append(self.build_id_frame(pid, build_id, value))
                continue
            out.append(self.user_frame(pid, value))
        return out

    def note_file_bases(self, pid: int, ips: Iterable[int], frames: Iterable[tuple[int, str, int]]) -> None:
        """One user stack of pid taken both ways at the same moment (plain addresses, and
        (status, build id, file offset) frames) tells where each file was mapped: address -
        file offset. A frame that came back as a plain address only (the kernel could not
        resolve it: it does not wait for the process's mmap lock, and then gives addresses
        for the whole stack), or a stack without a build-id twin, is then named through
        those bases once the process has exited and its maps are gone."""
        bases = self._bases.setdefault(pid, set())
        known = len(bases)
        bases.update((build_id, ip - off) for ip, (status, build_id, off) in zip(ips, frames) if status == 1)
        if len(bases) > known:
            self._frames.pop(pid, None)  # frames named [unknown] before may be named now

    def _frame_of_known_base(self, pid: int, addr: int) -> str | None:
        """A frame of pid (maps gone) in a file whose base note_file_bases() learned, when
        the offset falls in one of that file's loaded segments; None otherwise."""
        bases = self._bases.get(pid)
        if bases:
            self._learn_build_ids(pid)  # the files of those build ids (once per interval)
        for build_id, base in bases or ():
            off = addr - base
            _module, (_fkey, syms) = self._by_build_id_file.get(build_id, (None, (None, None)))
            if off >= 0 and syms is not None and syms.file_offset_to_vaddr(off) is not None:
                return self.build_id_frame(pid, build_id, off)
        return None
