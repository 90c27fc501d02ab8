"""Read and write MNIST's IDX format, checking the header before trusting any size it claims."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist.errors import StageError
from fmnist.files import atomic_path

# IDX type codes (http://yann.lecun.com/exdb/mnist/); multi-byte values are big-endian.
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
# Far above any IDX dataset of this family (EMNIST's largest file decodes to about 550 MB), and a bound on a gzip bomb.
MAX_DECODED_BYTES = 2 << 30


class IdxError(StageError):
    """A file that is not valid IDX, or not the IDX file it should be."""


@dataclass(frozen=True)
class IdxHeader:
    dtype: np.dtype
    dims: tuple[int, ...]

    @property
    def size(self) -> int:
        """Bytes of the header itself."""
        return 4 + 4 * len(self.dims)

    @property
    def payload_bytes(self) -> int:
        return math.prod(self.dims) * self.dtype.itemsize  # Python ints: a lying header must not overflow


def parse_header(data: bytes, name: str) -> IdxHeader:
    """Decode the magic number and dimensions; raise IdxError naming `name` on anything unexpected."""
    if len(data) < 4:
        raise IdxError(f"{name}: {len(data)} bytes, too short for an IDX magic number (4 bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in DTYPES or not 1 <= ndim <= 4:
        raise IdxError(
            f"{name}: bad IDX magic number 0x{data[:4].hex()}: expected 0x0000 then a type code "
            f"({', '.join(f'0x{c:02x}' for c in DTYPES)}) and 1-4 dimensions"
        )
    if len(data) < 4 + 4 * ndim:
        raise IdxError(f"{name}: header truncated: {ndim} dimensions need {4 + 4 * ndim} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return IdxHeader(DTYPES[code], dims)


def parse(data: bytes, name: str) -> np.ndarray:
    """Decoded IDX bytes -> array (a view of `data`, native byte order for uint8)."""
    header = parse_header(data, name)
    present = len(data) - header.size
    if present != header.payload_bytes:
        problem = "truncated" if present < header.payload_bytes else "has trailing bytes"
        raise IdxError(
            f"{name}: {problem}: header claims dims {list(header.dims)} = {header.payload_bytes} bytes of data, "
            f"file holds {present}"
        )
    array = np.frombuffer(data, dtype=header.dtype, offset=header.size).reshape(header.dims)
    return array.astype(array.dtype.newbyteorder("=")) if array.dtype.byteorder == ">" else array


def decode(path: str | Path, max_bytes: int = MAX_DECODED_BYTES) -> bytearray:
    """The file's IDX bytes, gunzipped when it is a .gz, in one buffer sized from its header: a header that claims
    more than `max_bytes` is refused before anything is allocated, and decoding stops at the size it claims, so a
    gzip bomb or a lying header costs at most `max_bytes` of memory."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            if path.suffix == ".gz" and not is_gzip:
                start = raw.read(16)
                hint = " (looks like an HTML page: a mirror's error page?)" if start.lstrip().startswith(b"<") else ""
                raise IdxError(f"{path}: not a gzip file: starts with {start!r}{hint}")
            stream = gzip.GzipFile(fileobj=raw) if is_gzip else raw
            head = stream.read(4)
            if len(head) == 4:
                head += stream.read(4 * head[3])
            header = parse_header(head, str(path))
            total = header.size + header.payload_bytes
            if total > max_bytes:
                raise IdxError(f"{path}: header claims dims {list(header.dims)} = {total} bytes, more than the "
                               f"{max_bytes} this file may hold")
            buffer = bytearray(total)
            buffer[:header.size] = head
            view, filled = memoryview(buffer), header.size
            while filled < total and (got := stream.readinto(view[filled:])):
                filled += got
            view.release()
            if filled == total and stream.read(1):
                raise IdxError(f"{path}: has trailing bytes: header claims dims {list(header.dims)} = "
                               f"{header.payload_bytes} bytes of data, the file holds more")
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IdxError(f"{path}: corrupt or truncated gzip data: {exc}") from None
    except OSError as exc:
        raise IdxError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return buffer if filled == total else buffer[:filled]  # a truncated file: parse() says by how much


def read(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not."""
    return parse(decode(path), str(path))


def encode(array: np.ndarray) -> bytes:
    """Array -> IDX bytes (header + big-endian payload)."""
    array = np.asarray(array)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = next((c for c, d in DTYPES.items() if d == big_endian), None)
    if code is None or not 1 <= array.ndim <= 4:
        raise IdxError(f"cannot write dtype {array.dtype} with {array.ndim} dimensions as IDX")
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    return header + array.astype(big_endian).tobytes()


def write(path: str | Path, array: np.ndarray) -> None:
    """Write an IDX file atomically, gzipped when the name ends in .gz."""
    data = encode(array)
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".gz":
            # No name or mtime in the gzip header: the same array always gives the same bytes (stable DVC hashes).
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(data)
        else:
            tmp.write_bytes(data)
