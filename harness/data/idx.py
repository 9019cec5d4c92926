"""The IDX format of MNIST-style datasets (http://yann.lecun.com/exdb/mnist/).

A header of two zero bytes, a type code and the number of dimensions, then
one big-endian int32 per dimension, then the values in row-major order.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch

# Type codes of the format; multi-byte values are big-endian.
_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(data: bytes) -> torch.Tensor:
    """Parse an IDX payload into a tensor of its shape (a copy: the bytes can be freed).

    Raises :class:`ValueError` if the header is malformed, the type code is
    unknown or the length does not match the dimensions.
    """
    if len(data) < 4:
        raise ValueError(f"IDX data too short for a header: {len(data)} bytes")
    zero, code, ndim = struct.unpack_from(">HBB", data)
    if zero != 0:
        raise ValueError(f"not IDX data: the first two bytes are {data[:2].hex()}, not 0000")
    if code not in _DTYPES:
        raise ValueError(f"unsupported IDX type code 0x{code:02x}; known: {', '.join(f'0x{c:02x}' for c in _DTYPES)}")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"IDX header declares {ndim} dimensions but the data has only {len(data)} bytes")
    dims = struct.unpack_from(f">{ndim}i", data, 4)
    if any(d < 0 for d in dims):
        raise ValueError(f"IDX header has negative dimensions {dims}")
    dtype = _DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = offset + count * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"IDX data of shape {tuple(dims)} must be {expected} bytes, got {len(data)}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims)
    # astype copies into a writable, native-endian array that torch can share.
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))

