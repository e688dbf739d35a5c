"""Reading and writing images and tables: SimpleITK for NIfTI, NRRD and DICOM series; atomic writes.

Every write goes to a temporary file in the destination folder and is then renamed over the target
(``os.replace`` is atomic on POSIX), so a crash never leaves a half-written file where a reader, or a
cache, would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from survival_model.errors import SurvivalModelError
from survival_model.owners import owned_prefix


class ImageReadError(SurvivalModelError):
    """An image file or DICOM series could not be read."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"cannot read image {path}: {detail}")
        self.path = path
        self.detail = detail


_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix


def read_dicom_series(folder: Path) -> sitk.Image:
    """Read the one DICOM series in ``folder`` (geometry from its tags, slices sorted by position)."""
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ImageReadError(folder, "no DICOM series found in this folder")
    if len(series_ids) > 1:
        raise ImageReadError(
            folder, f"{len(series_ids)} DICOM series in one folder; put each series in its own folder"
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    reader.SetFileNames(files)
    try:
        image: sitk.Image = reader.Execute()
        return image
    except RuntimeError as exc:
        raise ImageReadError(folder, _first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if "ERROR" in line or "Exception" in line or "error" in line:
            return line.strip()[:300]
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_nifti(path: Path) -> int:
    """Check a NIfTI file against its own header and return its non-finite voxels (0 for an integer type).

    Raises :class:`ImageReadError` when the header is not NIfTI (e.g. an uncompressed file named ``.nii.gz``) or
    the file holds fewer bytes than the header declares: ITK's reader returns what it could decompress from a
    truncated ``.nii.gz`` without an error. Non-finite voxels are counted from the stored values because ITK's
    reader silently turns NaN and infinities into 0.
    """
    import nibabel as nib  # nibabel (~30 ms, 70 modules): only when a NIfTI is checked, not on the CLI's --version

    try:
        image: Any = nib.load(str(path))
        header = image.header
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * \
            int(header.get_data_dtype().itemsize)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for bad headers
        raise ImageReadError(path, f"not a valid NIfTI file ({exc})") from None
    if str(path).endswith(".gz"):
        stored = 0
        try:
            with gzip.open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    stored += len(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageReadError(path, f"the gzip stream is broken after {stored} bytes ({exc}); the file is "
                                       "truncated or corrupt") from None
    else:
        stored = Path(path).stat().st_size
    if stored < expected:
        raise ImageReadError(path, f"truncated: {stored} bytes where its header declares {expected}")
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return 0
    data = np.asanyarray(image.dataobj)
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def read_image(path: Path) -> sitk.Image:
    """Read a 3D image file, or a DICOM series folder. Singleton 4th dimensions are dropped."""
    path = Path(path)
    if path.is_dir():
        image = read_dicom_series(path)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageReadError(path, _first_line(exc)) from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise ImageReadError(path, f"expected a 3D image, found {image.GetDimension()}D {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(path, "expected a scalar image, found a multi-component (vector/RGB) one")
    return image


@contextlib.contextmanager
def _atomic_target(path: Path, suffix: str) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_image(image: sitk.Image, path: Path, *, compress: bool = True) -> Path:
    """Write an image atomically; the format follows the file name (``.nii.gz``, ``.nrrd`` ...)."""
    path = Path(path)
    with _atomic_target(path, image_suffix(path)) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path


def write_bytes(data: bytes, path: Path) -> Path:
    path = Path(path)
    with _atomic_target(path, path.suffix) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(text: str, path: Path) -> Path:
    return write_bytes(text.encode("utf-8"), path)


def write_json(data: Any, path: Path) -> Path:
    return write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write a DataFrame as Parquet (pyarrow) atomically, without the pandas index."""
    path = Path(path)
    with _atomic_target(path, ".parquet") as tmp:
        frame.to_parquet(tmp, engine="pyarrow", index=False)
    return path


@contextlib.contextmanager
def atomic_directory(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``path`` when the block succeeds.

    If ``path`` already exists when the block ends (another worker finished the same content-keyed
    output first), the new copy is discarded: content-keyed outputs are identical by construction. With
    ``replace`` (an output that is not content-keyed, e.g. a report naming the registry's state), the old
    folder is moved aside and the new one takes its place; a reader sees one or the other, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name carries its owner (host, pid, start time): a later run removes it only once that owner is
    # dead (survival_model.owners.remove_orphans), never while a concurrent run is writing it
    tmp = Path(tempfile.mkdtemp(prefix=owned_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if replace and path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rename(path, old / path.name)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, path)
            except OSError:
                if not path.exists():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
