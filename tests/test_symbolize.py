"""The symboliser against independent truth: `nm` for ELF symbol tables, and live
processes that print the addresses of their own functions (PIE executable, shared
library, a binary inside a chroot, a deleted binary, a JIT's perf map)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bpfscope.symbolize import KERNEL_SUFFIX, Kallsyms, Symbolizer
from bpfscope.symbolize.elf import code_layout, read_build_id, read_elf
from bpfscope.symbolize.procmaps import PerfMap, parse_maps

CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(not CC, reason="no C compiler")

LIB = r"""
__attribute__((noinline)) int lib_function(int x) { return x * 3 + 1; }
"""
PROG = r"""
#include <stdio.h>
#include <unistd.h>
extern int lib_function(int);
__attribute__((noinline)) int prog_function(int x) { return x + 7; }
int main(void) {
    printf("%lx %lx %lx\n", (unsigned long)&main, (unsigned long)&prog_function,
           (unsigned long)&lib_function);
    fflush(stdout);
    pause();
    return prog_function(lib_function(1));
}
"""
STATIC = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int in_chroot(int x) { return x * 5; }
int main(void) {
    printf("%lx\n", (unsigned long)&in_chroot);
    fflush(stdout);
    pause();
    return in_chroot(1);
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    if not CC:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("sym")
    (d / "lib.c").write_text(LIB)
    (d / "prog.c").write_text(PROG)
    subprocess.run([CC, "-O1", "-fPIC", "-shared", "-o", str(d / "libsymtest.so"), str(d / "lib.c")], check=True)
    subprocess.run([CC, "-O1", "-fPIE", "-pie", "-o", str(d / "prog"), str(d / "prog.c"), f"-L{d}", "-lsymtest",
                    f"-Wl,-rpath,{d}"], check=True)
    return d


def _start(argv: list[str], **kw) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, **kw)
    addrs = [int(a, 16) for a in proc.stdout.readline().split()]
    return proc, addrs


def _nm(path: Path) -> dict[str, int]:
    out = subprocess.run(["nm", "--defined-only", str(path)], capture_output=True, text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            syms[parts[2]] = int(parts[0], 16)
    return syms


def test_elf_function_symbols_match_nm(built):
    for path in (built / "prog", built / "libsymtest.so"):
        elf = read_elf(str(path))
        nm = _nm(path)
        assert elf.is_dyn  # PIE and shared library
        for name in ("prog_function", "main") if path.name == "prog" else ("lib_function",):
            assert elf.lookup(nm[name]) == (name, 0)
            assert elf.lookup(nm[name] + 2) == (name, 2)


def test_libc_symbols_match_nm_dynamic():
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    if not os.path.exists(libc):
        pytest.skip("no x86_64 libc")
    out = subprocess.run(["nm", "-D", "--defined-only", libc], capture_output=True, text=True, check=True).stdout
    want = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("T", "W") and parts[2].split("@")[0] in ("malloc", "free", "nanosleep"):
            want[parts[2].split("@")[0]] = int(parts[0], 16)
    elf = read_elf(libc)
    assert set(want) == {"malloc", "free", "nanosleep"}
    for name, addr in want.items():
        found, off = elf.lookup(addr + 1)
        assert off == 1 and elf.addrs[elf.names.index(found)] == addr


def test_code_layout_matches_nm_and_readelf(built):
    """The address of a function and the executable segments' range, as `nm` and
    `readelf -l` give them (stack mem tells libc's own mmap calls apart with them)."""
    path = built / "libsymtest.so"
    lo, hi = 1 << 64, 0
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD" and "E" in parts[6:-1]:
            vaddr, memsz = int(parts[2], 16), int(parts[5], 16)
            lo, hi = min(lo, vaddr), max(hi, vaddr + memsz)
    assert hi > lo
    assert code_layout(str(path), "lib_function") == (_nm(path)["lib_function"], lo, hi)
    assert code_layout(str(path), "lib_func") is None  # a prefix is not the name


def test_build_id_matches_readelf(built):
    out = subprocess.run(["readelf", "-n", str(built / "prog")], capture_output=True, text=True).stdout
    ids = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Build ID" in line]
    if not ids:
        pytest.skip("linker wrote no build id")
    assert read_build_id(str(built / "prog")) == ids[0]


def test_live_pie_and_shared_library_addresses_are_named(built):
    proc, (main_addr, prog_addr, lib_addr) = _start([str(built / "prog")])
    try:
        sym = Symbolizer()
        assert sym.user_frame(proc.pid, main_addr) == "main"
        assert sym.user_frame(proc.pid, prog_addr + 1) == "prog_function"
        assert sym.user_frame(proc.pid, lib_addr) == "lib_function"
        # the user stack walk gives return addresses: looked up one byte back
        assert sym.user_stack(proc.pid, [prog_addr, lib_addr + 1]) == ["prog_function", "lib_function"]
    finally:
        proc.kill()
        proc.wait()


def test_deleted_binary_is_read_through_map_files(built, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("/proc/PID/map_files needs root")
    exe = tmp_path / "doomed"
    shutil.copy(built / "prog", exe)
    proc, (_main, prog_addr, _lib) = _start([str(exe)])
    try:
        exe.unlink()
        assert Symbolizer().user_frame(proc.pid, prog_addr) == "prog_function"
    finally:
        proc.kill()
        proc.wait()


def test_binary_inside_a_chroot_is_read_through_proc_root(tmp_path):
    if os.geteuid() != 0 or not CC:
        pytest.skip("chroot needs root and a C compiler")
    (tmp_path / "s.c").write_text(STATIC)
    root = tmp_path / "root"
    root.mkdir()
    r = subprocess.run([CC, "-O1", "-static", "-o", str(root / "inside"), str(tmp_path / "s.c")])
    if r.returncode:
        pytest.skip("no static libc to build a chroot binary")
    proc, (addr,) = _start(["chroot", str(root), "/inside"])
    try:
        assert not os.path.exists("/inside")  # only visible from the process's root
        assert Symbolizer().user_frame(proc.pid, addr) == "in_chroot"
    finally:
        proc.kill()
        proc.wait()


def test_perf_map_names_jit_code_and_unknown_frames_keep_their_module(built):
    proc, (_main, prog_addr, _lib) = _start([str(built / "prog")])
    perf_map = Path(f"/tmp/perf-{proc.pid}.map")
    try:
        # a JIT writes START SIZE NAME for code in anonymous memory; 0x1000 is mapped by nobody
        perf_map.write_text("1000 100 LuaJIT::trace_42\n2000 10 java.lang.String::hashCode\n")
        sym = Symbolizer()
        assert sym.user_frame(proc.pid, 0x1010) == "LuaJIT::trace_42"
        assert sym.user_frame(proc.pid, 0x2005) == "java.lang.String::hashCode"
        assert sym.user_frame(proc.pid, 0x3000) == "[unknown]+0x3000"
        # an address inside the executable but past every symbol: module+offset
        maps = sym.process_maps(proc.pid)
        text = next(m for m in maps.mappings if m.path.endswith("/prog"))
        frame = sym.user_frame(proc.pid, text.end - 1)
        assert frame.startswith("prog+0x") or frame in ("_fini", "main", "prog_function")
    finally:
        perf_map.unlink(missing_ok=True)
        proc.kill()
        proc.wait()


def test_exited_process_keeps_its_last_maps(built):
    proc, (_main, prog_addr, _lib) = _start([str(built / "prog")])
    sym = Symbolizer()
    assert sym.process_maps(proc.pid) is not None
    sym.refresh()
    proc.kill()
    proc.wait()
    assert sym.user_frame(proc.pid, prog_addr) == "prog_function"


def test_parse_maps_keeps_executable_mappings_and_deleted_flag():
    text = ("55d0c0000000-55d0c0001000 r--p 00000000 fe:00 12 /usr/bin/x\n"
            "55d0c0001000-55d0c0002000 r-xp 00001000 fe:00 12 /usr/bin/x\n"
            "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n"
            "7f0000002000-7f0000003000 r-xp 00002000 fe:00 99 /tmp/gone (deleted)\n")
    maps = parse_maps(text)
    assert [(m.path, m.deleted) for m in maps] == [("/usr/bin/x", False), ("", False), ("/tmp/gone", True)]
    assert maps[0].file_offset(0x55d0c0001010) == 0x1010


def test_perf_map_lookup_is_bounded_by_size(tmp_path):
    p = tmp_path / "perf-1.map"
    p.write_text("10 10 a\n30 5 b\nzz bad line\n")
    m = PerfMap(str(p))
    assert (m.lookup(0x15), m.lookup(0x22), m.lookup(0x34), m.lookup(0x35)) == ("a", None, "b", None)


def test_kallsyms_names_kernel_text():
    if os.geteuid() != 0:
        pytest.skip("kallsyms addresses are zero without root")
    ks = Kallsyms()
    with open("/proc/kallsyms") as f:
        addr = next(int(line.split()[0], 16) for line in f if line.split()[2:3] == ["schedule"])
    assert ks.lookup(addr) == "schedule"
    assert Symbolizer().kernel_frame(addr + 1) == "schedule" + KERNEL_SUFFIX


def test_names_follow_the_maps_when_a_process_execs(built, tmp_path):
    """A fake /proc: pid 4242 maps prog, then (after an exec) libsymtest.so at the same
    address; the next interval names the new code, the same interval keeps its answer."""
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "root").symlink_to("/")
    prog, lib = built / "prog", built / "libsymtest.so"
    base = 0x555500000000

    def map_file(path: Path, name: str) -> int:
        elf = read_elf(str(path))
        vaddr = elf.addrs[elf.names.index(name)]
        p_off, _size, p_vaddr = next(s for s in elf.segments if s[2] <= vaddr < s[2] + s[1])
        page = (vaddr - p_vaddr + p_off) & ~0xFFF
        st = path.stat()
        (proc / "4242" / "maps").write_text(
            f"{base:x}-{base + 0x100000:x} r-xp {page:08x} fe:00 {st.st_ino} {path}\n")
        return base + (vaddr - p_vaddr + p_off - page)

    sym = Symbolizer(proc=str(proc))
    addr = map_file(prog, "prog_function")
    assert sym.user_frame(4242, addr) == "prog_function"
    addr2 = map_file(lib, "lib_function")
    assert sym.user_frame(4242, addr) == "prog_function"  # same interval: maps read once
    sym.refresh()
    assert sym.user_frame(4242, addr2) == "lib_function"


def test_build_id_frames_of_a_process_never_seen_are_named_through_its_exec_path(built):
    """(build id, file offset) frames: the build id leads to the file the process exec'd
    (the kernel side's record) without /proc/PID; an unknown build id keeps it and the
    offset, never a bare address."""
    prog = built / "prog"
    syms = read_elf(str(prog))
    vaddr = _nm(prog)["prog_function"]
    off = syms.vaddr_to_file_offset(vaddr)
    bid = read_build_id(str(prog))
    if not bid:
        pytest.skip("linker wrote no build id")
    gone = 2**22 + 12345  # above pid_max's default: no such process
    sym = Symbolizer()
    assert sym.build_id_frame(gone, bid, off) == f"[build-id {bid[:16]}]+0x{off:x}"
    sym.refresh()
    sym.note_exec(gone, str(prog))
    # leaf first: the leaf's offset as is, a return address one byte back
    assert sym.user_stack_build_id(gone, [(1, bid, off), (1, bid, off + 1)]) == ["prog_function"] * 2
    assert sym.build_id_frame(gone, "ab" * 20, 0x1234) == f"[build-id {'ab' * 8}]+0x1234"


def test_plain_addresses_of_an_exited_process_are_named_through_bases_its_build_id_stacks_showed(built):
    """The kernel gives a stack as plain addresses when it cannot resolve build ids (it
    does not wait for the process's mmap lock): once the process's maps are gone, those
    addresses are named through where its other stacks, taken both ways, put each file."""
    prog = built / "prog"
    bid = read_build_id(str(prog))
    if not bid:
        pytest.skip("linker wrote no build id")
    syms = read_elf(str(prog))
    nm = _nm(prog)
    off = {name: syms.vaddr_to_file_offset(nm[name]) for name in ("main", "prog_function")}
    gone = 2**22 + 23456  # above pid_max's default: no such process
    base = 0x5555_5555_4000  # where this (imaginary) process mapped prog
    sym = Symbolizer()
    sym.note_exec(gone, str(prog))
    ips = [base + off["prog_function"], base + off["main"] + 1]
    assert sym.user_stack(gone, ips) == [f"[unknown]+0x{ips[0]:x}", f"[unknown]+0x{ips[1] - 1:x}"]
    # one stack taken both ways: the leaf in prog_function (status 1, VALID: build id and offset)
    sym.note_file_bases(gone, ips[:1], [(1, bid, off["prog_function"])])
    assert sym.user_stack(gone, ips) == ["prog_function", "main"]
    # the same way inside a build-id stack whose frames came back as addresses (status 2, IP)
    assert sym.user_stack_build_id(gone, [(2, "", ips[0]), (2, "", ips[1])]) == ["prog_function", "main"]
    # an address past the file's loaded segments is in no file we know: unknown still
    far = base + 0x4000_0000
    assert sym.user_frame(gone, far) == f"[unknown]+0x{far:x}"
