"""What kind of container a file is, from its first bytes (extensions lie)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import h5py

from coherence.errors import SchemaError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CLASSIC_NETCDF = (b"CDF\x01", b"CDF\x02", b"CDF\x05")


def require_hdf5(path: Path) -> None:
    """Refuse anything h5py cannot open, saying what it is and how to convert it.

    netCDF4 files are HDF5 inside (h5py reads them); classic netCDF (CDF1/2/5) is not.
    """
    if path.is_dir():
        raise SchemaError(
            f"{path}: a folder, not a file; pass the HDF5/netCDF files in it (The Well: "
            "data/train/NAME.hdf5 data/valid/NAME.hdf5 data/test/NAME.hdf5)"
        )
    if not path.is_file():
        raise SchemaError(f"{path}: no such file; check the path")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(CLASSIC_NETCDF):
        raise SchemaError(
            f"{path}: this is a classic netCDF file (header {head[:4]!r}), not netCDF4/HDF5; "
            f"convert it once with `nccopy -k nc4 {path.name} {path.stem}.nc4.nc` (netCDF "
            "tools: apt install netcdf-bin) and import the converted file"
        )
    # HDF5 may also start at byte 512, 1024, … (a user block); h5py copes with those.
    if head != HDF5_MAGIC and not _has_late_superblock(path):
        raise SchemaError(
            f"{path}: not an HDF5/netCDF4 file (starts with {head!r}); the download may be "
            "truncated or an HTML error page: download it again"
        )


def open_hdf5(path: Path) -> h5py.File:
    """``require_hdf5``, then open it read-only; a file whose header is right but whose body
    h5py cannot read (a download cut short) is refused by name instead of a traceback."""
    require_hdf5(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SchemaError(
            f"{path}: HDF5 cannot read this file ({exc}); it is likely truncated (an "
            "interrupted download or copy): download or copy it again"
        ) from None


# HDF5's words for a filter it does not have ("required filter 'blosc' is not registered",
# a plugin directory it cannot open); a filter it has that fails on damaged bytes says
# "filter returned failure during read", which is a damaged file (gzip is built in, and
# the advice to h5repack failed on the same bytes)
_MISSING_FILTER = re.compile(r"not registered|plugin|not available|can't open directory", re.I)


@contextlib.contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """Reading a source whose header is sound but whose body is not (bytes overwritten, not
    cut short) makes HDF5 raise a bare RuntimeError or an OSError mid-read; refused by name
    like a truncated file. HDF5 sets no errno, but names one in its message where the
    system failed (a drive or network mount: ``errno = 5``), and names a filter it lacks:
    those are said as what they are, not as a damaged file to download again."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        said = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if re.search(r"errno = [1-9]", said):
            fix = "the system could not read it: check the drive or mount it is on, then rerun"
        elif _MISSING_FILTER.search(said):
            fix = (
                "it is compressed with an HDF5 filter this installation lacks: rewrite it "
                "uncompressed (`h5repack -f NONE in out`) or install the filter's plugin"
            )
        else:
            fix = "it is damaged (a corrupted download or copy): download or copy it again"
        raise SchemaError(f"{path}: HDF5 could not read this file ({said}); {fix}") from None


def _has_late_superblock(path: Path) -> bool:
    size = path.stat().st_size
    offset = 512
    with open(path, "rb") as handle:
        while offset + 8 <= size and offset <= 1 << 20:
            handle.seek(offset)
            if handle.read(8) == HDF5_MAGIC:
                return True
            offset *= 2
    return False
