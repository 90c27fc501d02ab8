import gzip
import tracemalloc

import numpy as np
import pytest

from fmnist.data import idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_round_trip_keeps_values_shape_and_dtype(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    idx.write(path, array)
    back = idx.read(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_header_matches_the_mnist_layout():
    data = idx.encode(np.zeros((60000, 28, 28), np.uint8)[:2])
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")


def test_gzip_output_is_deterministic(tmp_path):
    array = np.arange(100, dtype=np.uint8)
    idx.write(tmp_path / "a.gz", array)
    idx.write(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


@pytest.mark.fault
def test_wrong_magic_is_rejected_with_the_bytes_seen():
    data = bytearray(idx.encode(np.zeros((3, 2, 2), np.uint8)))
    data[2] = 0x42
    with pytest.raises(idx.IdxError, match=r"f: bad IDX magic number 0x00004203"):
        idx.parse(bytes(data), "f")


@pytest.mark.fault
def test_truncated_payload_is_rejected_with_sizes():
    data = idx.encode(np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(idx.IdxError, match=r"truncated: header claims dims \[3, 2, 2\] = 12 bytes .* holds 11"):
        idx.parse(data[:-1], "f")


@pytest.mark.fault
def test_trailing_bytes_are_rejected():
    with pytest.raises(idx.IdxError, match="trailing bytes"):
        idx.parse(idx.encode(np.zeros(4, np.uint8)) + b"\x00", "f")


@pytest.mark.fault
def test_header_claiming_huge_counts_fails_without_allocating_for_them(tmp_path):
    # 4e9 x 4e9 x 4e9 items claimed, 10 bytes present: must fail on the size check, not on a MemoryError.
    header = b"\x00\x00\x08\x03" + (4_000_000_000).to_bytes(4, "big") * 3
    path = tmp_path / "liar-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + b"\x00" * 10))
    tracemalloc.start()
    with pytest.raises(idx.IdxError, match=r"header claims dims \[4000000000, 4000000000, 4000000000\] = \d+ bytes, "
                       r"more than the 2147483648 this file may hold"):
        idx.read(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20


@pytest.mark.fault
def test_html_instead_of_gzip_is_named(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"<!DOCTYPE html><html>Not Found</html>")
    with pytest.raises(idx.IdxError, match="not a gzip file.*HTML"):
        idx.read(path)


@pytest.mark.fault
def test_flipped_byte_in_gzip_is_caught(tmp_path):
    path = tmp_path / "x.gz"
    idx.write(path, np.arange(5000, dtype=np.int32))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(idx.IdxError, match="corrupt or truncated gzip"):
        idx.read(path)


@pytest.mark.fault
def test_truncated_gzip_is_caught(tmp_path):
    path = tmp_path / "x.gz"
    idx.write(path, np.arange(5000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(idx.IdxError, match="corrupt or truncated gzip"):
        idx.read(path)


@pytest.mark.fault
def test_empty_file_is_too_short(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(idx.IdxError, match="0 bytes, too short"):
        idx.read(path)


@pytest.mark.fault
def test_unsupported_array_cannot_be_written(tmp_path):
    with pytest.raises(idx.IdxError, match="cannot write dtype complex128"):
        idx.write(tmp_path / "c", np.zeros(3, np.complex128))
