"""What a conversion is cached under: a digest of the files' content, not their path or time, so
the same files in another place (a new virtualenv's copy of a wheel) are converted once.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

SAMPLES, SAMPLE_SIZE, HEAD = 32, 1 << 16, 16 << 20


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as fh:
        digest.update(fh.read(HEAD))
        if size > HEAD:  # the tensor data: other weights under the same header differ here
            step = (size - HEAD) // SAMPLES
            for k in range(SAMPLES):
                fh.seek(HEAD + k * step)
                digest.update(fh.read(SAMPLE_SIZE))
            fh.seek(max(HEAD, size - SAMPLE_SIZE))
            digest.update(fh.read(SAMPLE_SIZE))
    return digest.hexdigest()


def content_digest(path: Path) -> str:
    """A digest of a file's content, or of a folder's files (names and contents): the size,
    the first 16 MiB (all of a GGUF header: its metadata, tokenizer and tensor table) and
    64 KiB at 33 places after it. Reads at most ~18 MiB a file, once per process per file."""
    if path.is_dir():
        digest = hashlib.blake2b(b"dir", digest_size=16)
        for child in sorted(path.iterdir()):
            if child.is_file():
                digest.update(f"{child.name}\0{content_digest(child)}\0".encode())
        return digest.hexdigest()
    try:
        st = path.stat()
        return _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return f"unreadable:{path.resolve()}"
