"""File helpers that import nothing heavy (safe on the ONNX Runtime path): content digests."""
import hashlib


def file_digest(path) -> str:
    """SHA-256 of a file's bytes, hex (read in 1 MiB blocks; hashlib.file_digest needs Python 3.11)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
