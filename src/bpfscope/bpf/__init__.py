"""libbpf through ctypes: objects, programs, links, maps, ring buffers.

Every failure raises BpfError (an OSError with errno text and, for a failed load, the
verifier log).
"""

from .btf import Btf, to_python
from .libbpf import BpfError
from .object import (BPF_ANY, BPF_EXIST, BPF_NOEXIST, BpfObject, Link, Map, PinnedMap, Program, object_path,
                     prog_exists, prog_info, wait_for_links)
from .perf import online_cpus
from .ringbuf import RingBuffer

__all__ = ["BPF_ANY", "BPF_EXIST", "BPF_NOEXIST", "BpfError", "BpfObject", "Btf", "Link", "Map", "PinnedMap", "Program",
           "RingBuffer", "object_path", "online_cpus", "prog_exists", "prog_info", "to_python", "wait_for_links"]
