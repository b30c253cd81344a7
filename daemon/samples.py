"""Decoded audio kept on disk: float32 samples in an anonymous temporary file, read by the slice.

A film's audio at 16 kHz is 230 MB an hour as float32; held whole in memory, a
few long files in flight (or one hostile upload) would take the machine's RAM.
`DiskSamples` keeps them in an unnamed temporary file (gone when it is closed or
the process ends) and reads only the slice asked for, with os.preadv: nothing is
memory-mapped, so resident memory does not grow with the file's length, and
reads from several threads never share a file position.

Code that handles samples takes `len()` and slices (each slice a new numpy
array), which a numpy array gives too: Bazarr's in-memory requests need no
conversion. `np.asarray(samples)` works as well but reads the whole file into
memory; the daemon's own code slices instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

FLOAT32 = np.dtype("<f4")
SAMPLE_BYTES = FLOAT32.itemsize
PcmFormat = Literal["s16le", "f32le"]


class DiskSamples:
    """Read-only mono float32 samples held in an (unnamed) temporary file.

    len(), slicing (any step; negative indices as numpy has them) and an int index
    work as on a numpy array, each slice read from disk into a new array; `dtype`,
    `shape`, `ndim`, `size` and `nbytes` are a numpy array's. The file is freed by
    `close()`, or when this object is garbage-collected.
    """

    dtype = FLOAT32
    ndim = 1

    def __init__(self, file: IO[bytes], length: int) -> None:
        """Given an open file holding `length` little-endian float32 samples from offset 0, own it."""
        self._file = file
        self._fd = file.fileno()
        self._length = length

    def __len__(self) -> int:
        return self._length

    @property
    def shape(self) -> tuple[int]:
        return (self._length,)

    @property
    def size(self) -> int:
        return self._length

    @property
    def nbytes(self) -> int:
        return self._length * SAMPLE_BYTES

    def __getitem__(self, key: int | slice) -> Any:
        """Given an index or a slice, return that sample (np.float32) or those samples (a new array).

        Raise IndexError for an index out of range, TypeError for anything but an int or a slice.
        """
        if isinstance(key, slice):
            start, stop, step = key.indices(self._length)
            # Read the stretch the slice covers, then step through it (backwards: from its end).
            low, high = (start, stop) if step > 0 else (stop + 1, start + 1)
            covered = self._read(low, max(high, low))
            return covered if step == 1 else covered[::step]
        if isinstance(key, (int, np.integer)):
            index = int(key) + (self._length if key < 0 else 0)
            if not 0 <= index < self._length:
                raise IndexError(f"index {int(key)} is out of range for {self._length} samples")
            return self._read(index, index + 1)[0]
        raise TypeError(f"samples on disk take an int or a slice, not {type(key).__name__}")

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """Return all the samples as one array: reads the whole file into memory (numpy's protocol)."""
        if copy is False:
            raise ValueError("samples on disk cannot be seen as an array without reading (a copy)")
        whole = self._read(0, self._length)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Return samples [start, stop) (0 <= start <= stop <= len) read from the file."""
        out = np.empty(stop - start, dtype=FLOAT32)
        view = memoryview(out).cast("B")
        done, offset = 0, start * SAMPLE_BYTES
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"the samples file ends {len(view) - done} bytes early")
            done += got
        return out

    def fileno(self) -> int:
        """The descriptor of the samples' file (a decoder child is handed it; see daemon.decoders)."""
        return self._fd

    def close(self) -> None:
        """Free the file (its disk space). Reading afterwards raises OSError."""
        self._fd = -1  # never read a descriptor number the system may have given to another file
        self._file.close()

    def __enter__(self) -> DiskSamples:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskSamples({self._length} samples, {self.nbytes / 1e6:.1f} MB on disk)"


def temporary_file(work_dir: Path | None = None) -> IO[bytes]:
    """Given a folder (None: the system's temporary folder, $TMPDIR or /tmp), return a new unnamed
    file in it, gone once closed; a missing folder is made. Raise OSError if none can be made there."""
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=work_dir if work_dir is not None else tempfile.gettempdir())


def from_file(file: IO[bytes]) -> DiskSamples:
    """Given an open file of little-endian float32 samples (ffmpeg's f32le output), return them.

    Raise ValueError if its length is not a whole number of samples.
    """
    size = os.fstat(file.fileno()).st_size
    if size % SAMPLE_BYTES:
        raise ValueError(f"{size} bytes of float32 samples is not a whole number of samples")
    return DiskSamples(file, size // SAMPLE_BYTES)


def from_pcm_stream(
    chunks: Iterable[bytes], fmt: PcmFormat, work_dir: Path | None = None, max_samples: int | None = None,
) -> DiskSamples:
    """Given raw mono PCM as a stream of byte chunks (s16le: signed 16-bit, or f32le: float32, both
    little-endian), return its samples as float32 on disk, one chunk in memory at a time.

    s16le becomes sample / 32768, as np.frombuffer(data, "<i2").astype(np.float32) / 32768 gives.
    Raise ValueError if the bytes end inside a sample or hold more than `max_samples` samples;
    OSError if the file cannot be written (the work folder is full).
    """
    width = {"s16le": 2, "f32le": SAMPLE_BYTES}[fmt]
    file = temporary_file(work_dir)
    try:
        count, carry = 0, b""
        for chunk in chunks:
            data = carry + bytes(chunk)
            whole = len(data) - len(data) % width
            carry = data[whole:]
            count += whole // width
            if max_samples is not None and count > max_samples:
                raise ValueError(f"the audio holds more than {max_samples} samples, its limit")
            file.write(_as_float32(data[:whole], fmt))
        if carry:
            raise ValueError(f"the audio ends inside a sample: {fmt} samples are {width} bytes each, "
                             f"and {len(carry)} byte(s) are left over")
        file.flush()
        return DiskSamples(file, count)
    except BaseException:
        file.close()
        raise


def _as_float32(data: bytes, fmt: PcmFormat) -> bytes:
    if fmt == "f32le":
        return data
    return (np.frombuffer(data, "<i2").astype(np.float32) / 32768.0).astype(FLOAT32).tobytes()
