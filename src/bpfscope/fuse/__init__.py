"""A FUSE file system mirroring a directory, spoken over /dev/fuse in pure Python (no libfuse)."""
