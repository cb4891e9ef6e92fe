"""Function symbols of an ELF64 file, read with `struct` (no dependency, fast enough to
load libc's or python's tables in milliseconds).

What is read: the PT_LOAD segments (to turn a file offset into a link-time address),
the function symbols of .symtab and .dynsym, and the GNU build id. When the file has no
.symtab but a separate debug file exists under /usr/lib/debug/.build-id/, its .symtab
is used as well.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from dataclasses import dataclass, field

SHT_SYMTAB, SHT_NOTE, SHT_DYNSYM, SHT_NOBITS = 2, 7, 11, 8
PT_LOAD = 1
STT_FUNC, STT_GNU_IFUNC = 2, 10
NT_GNU_BUILD_ID = 3
ET_DYN = 3
DEBUG_ROOT = "/usr/lib/debug/.build-id"


class ElfError(ValueError):
    pass


@dataclass
class ElfSymbols:
    """Sorted function symbols of one ELF file and its loadable segments. Names stay
    bytes in the file's string tables until looked up (a library names tens of thousands
    of functions; a profile looks up a few hundred)."""

    build_id: str | None = None
    is_dyn: bool = False  # ET_DYN: PIE executables and shared libraries
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (p_offset, p_filesz, p_vaddr)
    addrs: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    name_offs: list[int] = field(default_factory=list)  # into strings, NUL-terminated
    strings: bytes = b""

    def name(self, i: int) -> str:
        off = self.name_offs[i]
        return self.strings[off:self.strings.index(b"\0", off)].decode(errors="replace")

    @property
    def names(self) -> list[str]:
        return [self.name(i) for i in range(len(self.name_offs))]

    def file_offset_to_vaddr(self, off: int) -> int | None:
        for p_off, p_filesz, p_vaddr in self.segments:
            if p_off <= off < p_off + max(p_filesz, 1):
                return off - p_off + p_vaddr
        return None

    def vaddr_to_file_offset(self, vaddr: int) -> int | None:
        for p_off, p_filesz, p_vaddr in self.segments:
            if p_vaddr <= vaddr < p_vaddr + p_filesz:
                return vaddr - p_vaddr + p_off
        return None

    def lookup(self, vaddr: int) -> tuple[str, int] | None:
        """(function name, offset into it) of a link-time address, or None."""
        i = bisect.bisect_right(self.addrs, vaddr) - 1
        # a zero-sized symbol (assembly) covers up to the next one; walk back over
        # nested/aliased symbols whose end is before vaddr
        for j in range(i, max(i - 4, -1), -1):
            start, end = self.addrs[j], self.ends[j]
            if start <= vaddr < end or (end == start and vaddr - start < 4096 and j == i):
                return self.name(j), vaddr - start
        return None


def _sections(data, off: int, num: int, entsize: int):
    for i in range(num):
        # name, type, flags, addr, offset, size, link, info, addralign, entsize
        yield struct.unpack_from("<IIQQQQIIQQ", data, off + i * entsize)


def _read_symbols(data, sec, strsec, strings: bytearray, out: dict[int, tuple[int, int]]) -> None:
    """Function symbols of one table into out: address -> (size, name offset in strings);
    the table's names are appended to strings as they are."""
    _, _, _, _, off, size, _, _, _, entsize = sec
    base = len(strings)
    strings += data[strsec[4]:strsec[4] + strsec[5]]
    strings += b"\0"  # a name at the table's very end still ends
    entsize = entsize or 24
    for st_name, st_info, _other, st_shndx, st_value, st_size in struct.iter_unpack(
            "<IBBHQQ", data[off:off + size - size % entsize]):
        if st_shndx == 0 or not st_value or (st_info & 0xF) not in (STT_FUNC, STT_GNU_IFUNC):
            continue
        name = base + st_name
        if not strings[name]:  # no name (st_name 0 points at the table's leading NUL)
            continue
        old = out.get(st_value)
        # prefer a sized symbol, then a global name over a local alias (_IO_puts vs puts)
        if old is None or st_size > old[0]:
            out[st_value] = (st_size, name)
        elif st_size == old[0] and strings.index(0, name) - name < strings.index(0, old[1]) - old[1]:
            out[st_value] = (st_size, name)


def _build_id(data, sec) -> str | None:
    off, size = sec[4], sec[5]
    pos = off
    while pos + 12 <= off + size:
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_end = pos + 12 + (namesz + 3) // 4 * 4
        if ntype == NT_GNU_BUILD_ID and bytes(data[pos + 12:pos + 12 + namesz]).rstrip(b"\0") == b"GNU":
            return bytes(data[name_end:name_end + descsz]).hex()
        pos = name_end + (descsz + 3) // 4 * 4
    return None


def _parse(data, symbols: bool = True) -> tuple[ElfSymbols, dict[int, tuple[int, int]], bool]:
    if len(data) < 64 or bytes(data[:4]) != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian ELF is read")
    (e_type, _machine, _version, _entry, e_phoff, e_shoff, _flags, _ehsize, e_phentsize, e_phnum,
     e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
    info = ElfSymbols(is_dyn=e_type == ET_DYN)
    for i in range(e_phnum):
        p_type, _pf, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD:
            info.segments.append((p_offset, p_filesz, p_vaddr))
    syms: dict[int, tuple[int, int]] = {}
    strings = bytearray()
    has_symtab = False
    if e_shoff and e_shnum:
        secs = list(_sections(data, e_shoff, e_shnum, e_shentsize))
        for sec in secs:
            if sec[1] in (SHT_SYMTAB, SHT_DYNSYM) and sec[1] != SHT_NOBITS and sec[6] < len(secs):
                if sec[1] == SHT_SYMTAB:
                    has_symtab = True
                if not symbols:
                    continue
                if secs[sec[6]][1] == SHT_NOBITS or sec[4] + sec[5] > len(data):
                    continue  # a debug file's stripped copy
                _read_symbols(data, sec, secs[sec[6]], strings, syms)
            elif sec[1] == SHT_NOTE and info.build_id is None and sec[4] + sec[5] <= len(data):
                info.build_id = _build_id(data, sec)
    info.strings = bytes(strings)
    return info, syms, has_symtab


def _finish(info: ElfSymbols, syms: dict[int, tuple[int, int]]) -> ElfSymbols:
    ordered = sorted(syms.items())
    info.addrs = [a for a, _ in ordered]
    info.ends = [a + s for a, (s, _) in ordered]
    info.name_offs = [n for _, (_, n) in ordered]
    return info


def _map(path: str):
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ElfError("empty file")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_elf(path: str) -> ElfSymbols:
    """Symbols of the ELF file at path (raises OSError or ElfError)."""
    m = _map(path)
    try:
        info, syms, has_symtab = _parse(m)
    finally:
        m.close()
    if not has_symtab and info.build_id:
        debug = f"{DEBUG_ROOT}/{info.build_id[:2]}/{info.build_id[2:]}.debug"
        if os.path.exists(debug):
            try:
                dm = _map(debug)
                try:
                    dinfo, dsyms, _ = _parse(dm)
                finally:
                    dm.close()
                base = len(info.strings)
                info.strings += dinfo.strings
                for addr, (size, name) in dsyms.items():
                    syms.setdefault(addr, (size, base + name))
            except (OSError, ElfError, struct.error):
                pass
    return _finish(info, syms)


def elf_from_bytes(data) -> ElfSymbols:
    """Symbols of an ELF image already in memory (the vDSO; raises ElfError or struct.error)."""
    info, syms, _ = _parse(data)
    return _finish(info, syms)


def read_build_id(path: str) -> str | None:
    try:
        m = _map(path)
    except (OSError, ElfError):
        return None
    try:
        info, _, _ = _parse(m, symbols=False)  # the note alone: no symbol table is read
        return info.build_id
    except (ElfError, struct.error):
        return None
    finally:
        m.close()


PF_X = 1


def code_layout(path: str, symbol: str) -> tuple[int, int, int] | None:
    """(link-time address of the function `symbol` in .dynsym or .symtab, low and high
    link-time address of the executable PT_LOAD segments) of an ELF file, or None when the
    symbol is not there. The probes use it to tell a call from inside the file itself."""
    m = _map(path)
    try:
        if len(m) < 64 or m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:
            raise ElfError("not a 64-bit little-endian ELF file")
        (_type, _machine, _version, _entry, e_phoff, e_shoff, _flags, _ehsize, e_phentsize, e_phnum,
         e_shentsize, e_shnum, _shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", m, 16)
        lo, hi = 1 << 64, 0
        for i in range(e_phnum):
            p_type, p_flags, _off, p_vaddr, _paddr, _filesz, p_memsz, _align = struct.unpack_from(
                "<IIQQQQQQ", m, e_phoff + i * e_phentsize)
            if p_type == PT_LOAD and p_flags & PF_X:
                lo, hi = min(lo, p_vaddr), max(hi, p_vaddr + p_memsz)
        want = symbol.encode()
        secs = list(_sections(m, e_shoff, e_shnum, e_shentsize)) if e_shoff else []
        for sec in secs:
            if sec[1] not in (SHT_DYNSYM, SHT_SYMTAB) or sec[6] >= len(secs):
                continue
            _, _, _, _, off, size, link, _, _, entsize = sec
            stroff = secs[link][4]
            for st_name, st_info, _other, st_shndx, st_value, _size in struct.iter_unpack(
                    "<IBBHQQ", m[off:off + size - size % (entsize or 24)]):
                if st_shndx and st_value and (st_info & 0xF) in (STT_FUNC, STT_GNU_IFUNC) and \
                        m[stroff + st_name:stroff + st_name + len(want) + 1] == want + b"\0":
                    return (st_value, lo, hi) if hi else None
        return None
    finally:
        m.close()
