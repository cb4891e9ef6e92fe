"""BTF -> ctypes: the Python view of every map key, value and event is built from the
object's own BTF, so a C struct layout is written once (in bpf/include/*.h) and never
hand-copied into Python.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint32

from . import libbpf as L

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_TYPE_TAG, KIND_ENUM64 = 14, 15, 16, 18, 19
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class _Member(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class _Array(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("index_type", c_uint32), ("nelems", c_uint32)]


class _VarSecinfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class _Enum(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("val", ctypes.c_int32)]


class _Enum64(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("lo32", c_uint32), ("hi32", c_uint32)]


_INTS = {(1, False): ctypes.c_uint8, (1, True): ctypes.c_int8, (2, False): ctypes.c_uint16,
         (2, True): ctypes.c_int16, (4, False): ctypes.c_uint32, (4, True): ctypes.c_int32,
         (8, False): ctypes.c_uint64, (8, True): ctypes.c_int64}


class Btf:
    """A read-only view of one BTF blob (an object's, or the kernel's)."""

    def __init__(self, ptr: int, owned: bool = False):
        self.ptr = ptr
        self.owned = owned
        self._cache: dict[int, type] = {}

    @classmethod
    def vmlinux(cls) -> "Btf":
        return cls(L.check_ptr(L.btf__load_vmlinux_btf(), "load kernel BTF (/sys/kernel/btf/vmlinux)"), owned=True)

    def close(self) -> None:
        if self.owned and self.ptr:
            L.btf__free(self.ptr)
        self.ptr = None

    # --- raw access ---
    def _type(self, type_id: int) -> _BtfType:
        p = L.btf__type_by_id(self.ptr, type_id)
        if not p:
            raise KeyError(f"BTF type id {type_id} not found")
        return _BtfType.from_address(p)

    def _after(self, type_id: int, item: type, count: int):
        base = L.btf__type_by_id(self.ptr, type_id) + ctypes.sizeof(_BtfType)
        return (item * count).from_address(base)

    def name(self, off: int) -> str:
        raw = L.btf__name_by_offset(self.ptr, off)
        return raw.decode() if raw else ""

    @staticmethod
    def kind_of(t: _BtfType) -> int:
        return (t.info >> 24) & 0x1F

    def find(self, name: str, kind: int) -> int:
        tid = L.btf__find_by_name_kind(self.ptr, name.encode(), kind)
        if tid < 0:
            raise KeyError(f"BTF has no {name!r} (kind {kind})")
        return tid

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            t = self._type(type_id)
            if self.kind_of(t) not in _MODIFIERS:
                return type_id
            type_id = t.size_or_type

    # --- enums: drop reasons, task states, ... are read from the running kernel ---
    def enum_values(self, name: str) -> dict[int, str]:
        for kind in (KIND_ENUM, KIND_ENUM64):
            try:
                tid = self.find(name, kind)
            except KeyError:
                continue
            t = self._type(tid)
            vlen = t.info & 0xFFFF
            if kind == KIND_ENUM:
                return {e.val: self.name(e.name_off) for e in self._after(tid, _Enum, vlen)}
            return {(e.hi32 << 32) | e.lo32: self.name(e.name_off) for e in self._after(tid, _Enum64, vlen)}
        raise KeyError(f"BTF has no enum {name!r}")

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int, int]]:
        """{var name: (offset, size, type id)} of a data section such as .rodata."""
        tid = self.find(section, KIND_DATASEC)
        vlen = self._type(tid).info & 0xFFFF
        out = {}
        for si in self._after(tid, _VarSecinfo, vlen):
            var = self._type(si.type)
            out[self.name(var.name_off)] = (si.offset, si.size, var.size_or_type)
        return out

    # --- ctypes types ---
    def ctype(self, type_id: int) -> type:
        if type_id in self._cache:
            return self._cache[type_id]
        t = self._type(type_id)
        kind = self.kind_of(t)
        if kind in _MODIFIERS:
            result = self.ctype(t.size_or_type)
        elif kind == KIND_INT:
            enc = self._after(type_id, c_uint32, 1)[0]
            signed = bool((enc >> 24) & 1)
            # plain `char` arrays become strings (comm, names); u8 arrays stay numbers/bytes
            is_char = bool((enc >> 24) & 2) or self.name(t.name_off) == "char"
            result = ctypes.c_char if is_char and t.size_or_type == 1 else _INTS.get(
                (t.size_or_type, signed), ctypes.c_uint8 * t.size_or_type)
        elif kind in (KIND_ENUM, KIND_ENUM64):
            result = _INTS.get((t.size_or_type, False), ctypes.c_uint32)
        elif kind == KIND_PTR:
            result = ctypes.c_uint64
        elif kind == KIND_FLOAT:
            result = ctypes.c_double if t.size_or_type == 8 else ctypes.c_float
        elif kind == KIND_ARRAY:
            arr = self._after(type_id, _Array, 1)[0]
            result = self.ctype(arr.type) * arr.nelems
        elif kind in (KIND_STRUCT, KIND_UNION):
            result = self._struct(type_id, t, kind)
        else:
            raise TypeError(f"BTF kind {kind} of type {type_id} has no ctypes view")
        self._cache[type_id] = result
        return result

    def _struct(self, type_id: int, t: _BtfType, kind: int) -> type:
        vlen = t.info & 0xFFFF
        kflag = bool(t.info >> 31)
        fields, pos, pad = [], 0, 0
        for m in self._after(type_id, _Member, vlen):
            bit_off = m.offset & 0xFFFFFF if kflag else m.offset
            bitfield = kflag and (m.offset >> 24)
            if bitfield or bit_off % 8:
                continue  # bitfields are not read from Python; the bytes stay in padding
            off = bit_off // 8
            mtype = self.ctype(m.type)
            if kind == KIND_STRUCT:
                if off < pos:
                    continue
                if off > pos:
                    fields.append((f"_pad{pad}", ctypes.c_uint8 * (off - pos)))
                    pad += 1
                pos = off + ctypes.sizeof(mtype)
            fields.append((self.name(m.name_off) or f"_anon{pad}", mtype))
            pad += 1
        if kind == KIND_STRUCT and pos < t.size_or_type:
            fields.append((f"_pad{pad}", ctypes.c_uint8 * (t.size_or_type - pos)))
        base = ctypes.Structure if kind == KIND_STRUCT else ctypes.Union
        name = self.name(t.name_off) or f"anon_{type_id}"
        cls = type(name, (base,), {"_pack_": 1, "_fields_": fields})
        if ctypes.sizeof(cls) < t.size_or_type:  # a union whose widest member was a bitfield
            cls = type(name, (base,), {"_pack_": 1, "_fields_": fields + [("_raw", ctypes.c_uint8 * t.size_or_type)]})
        return cls


def to_python(value):
    """A ctypes value -> plain Python (dicts for structs, str for char arrays, lists)."""
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, ctypes.Array):
        if value._type_ is ctypes.c_char:
            return value.value.decode(errors="replace")
        return [to_python(v) for v in value]
    if isinstance(value, (ctypes.Structure, ctypes.Union)):
        return {name: to_python(getattr(value, name)) for name, _ in value._fields_ if not name.startswith("_")}
    if hasattr(value, "value"):
        return value.value
    return value
