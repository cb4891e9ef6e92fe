/* Helpers shared by every bpfscope BPF program. */
#ifndef BPFSCOPE_COMMON_H
#define BPFSCOPE_COMMON_H

/* Types only used through a ring buffer are invisible to BTF unless a global names
 * them; this anchor puts `struct name` in the object's BTF so Python can build its
 * ctypes view from there instead of hand-copying the layout. */
#define BTF_EXPORT_STRUCT(name) struct name *__btf_export_##name __attribute__((unused))

#endif
