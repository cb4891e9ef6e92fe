# bpfscope image: BPF objects compiled in a build stage, a slim runtime without a compiler.
#
#   docker build -t bpfscope .        (or `docker compose up`, which builds it)
#
# CO-RE: the objects are compiled once against a vmlinux.h that `make -C bpf` generates
# at build time from the BUILD host's /sys/kernel/btf/vmlinux (the build needs a kernel
# with BTF); libbpf relocates them at load time to the kernel the container runs on.

FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      clang-19 llvm-19 libbpf-dev bpftool linux-libc-dev make \
      python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY bpf ./bpf
RUN make -C bpf
COPY pyproject.toml README.md ./
COPY src ./src
# Not editable: the venv is copied whole into the runtime stage.
RUN python3 -m venv /opt/bpfscope \
 && /opt/bpfscope/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && ls /opt/bpfscope/lib/python3.11/site-packages/bpfscope/bpf/obj/*.bpf.o

FROM debian:bookworm-slim AS runtime
# libbpf1 is loaded through ctypes; python3 is the interpreter the venv links to
# (the same Debian python3 as in the build stage).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 libbpf1 libelf1 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/bpfscope /opt/bpfscope
ENV PATH=/opt/bpfscope/bin:$PATH PYTHONUNBUFFERED=1
VOLUME /var/lib/bpfscope
EXPOSE 9380 9390
ENTRYPOINT ["bpfscope"]
CMD ["up", "--listen", "127.0.0.1:9380", "--metrics-port", "9390", "--db", "sqlite:////var/lib/bpfscope/bpfscope.db"]
