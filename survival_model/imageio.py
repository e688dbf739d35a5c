"""Reading and writing images and tables: SimpleITK for NIfTI, NRRD and DICOM series; atomic writes.

Every write goes to a temporary file in the destination folder and is then renamed over the target
(``os.replace`` is atomic on POSIX), so a crash never leaves a half-written file where a reader, or a
cache, would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import re
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import SimpleITK as sitk

from survival_model.errors import SurvivalModelError
from survival_model.owners import owned_prefix

ReadFailure = Literal["unreadable", "unsupported", "too_large"]


class ImageReadError(SurvivalModelError):
    """An image file or DICOM series could not be read.

    ``kind`` says why: ``unreadable`` (missing, empty, corrupt or truncated), ``unsupported`` (not a 3D scalar
    volume) or ``too_large`` (its header declares more data than allowed; refused before reading).
    """

    def __init__(self, path: Path, detail: str, kind: ReadFailure = "unreadable") -> None:
        super().__init__(f"cannot read image {path}: {detail}")
        self.path = path
        self.detail = detail
        self.kind: ReadFailure = kind


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
        raise ImageReadError(folder, itk_reason(exc)) from None


#: Lines of a SimpleITK/ITK exception that say where it was thrown, not what is wrong.
_ITK_NOISE = re.compile(r"^(Exception thrown in SimpleITK|HDF5-DIAG|\s*#\d{3}:|\s*(major|minor):|, filename =)")
#: Prefixes before the sentence itself: ``sitk::ERROR:``, ``ITK ERROR: NrrdImageIO(0x55f1...):``, ``[nrrd] fn:``.
_ITK_PREFIX = re.compile(r"^(sitk::ERROR:\s*|ITK ERROR:\s*\w+\(0x[0-9a-f]+\):\s*|\[\w+\]\s*\w+:\s*)+")


def itk_reason(exc: BaseException, limit: int = 400) -> str:
    """What an ITK exception says is wrong, without its noise.

    ITK's messages start with where they were thrown (``Exception thrown in SimpleITK ImageFileReader_Execute:
    .../sitkImageReaderBase.cxx:99:``), then a generic sentence (``Read: Error reading <file>:``) and only then,
    often several lines further, the reason (``_nrrdEncodingRaw_read: fread got only 743 4-sized things, not
    1152``). The first line alone said nothing; this keeps the error's own line and the innermost reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not _ITK_NOISE.match(line)]
    sentences = [_ITK_PREFIX.sub("", line).strip() for line in lines]
    sentences = [s for s in sentences if s and not s.lower().startswith("trouble")]
    if not sentences:
        return type(exc).__name__
    kept = sentences[0] if len(sentences) == 1 else f"{sentences[0]} ... {sentences[-1]}"
    if "Unable to determine ImageIO reader" in kept:
        kept += " (ITK recognises no image format in the file: it is corrupt, empty or of another format)"
    return kept[:limit]


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


def _pixel_bytes(pixel_id: int, components: int) -> int:
    """Bytes per voxel of a SimpleITK pixel type (read from a one-voxel image of that type)."""
    return int(sitk.Image([1, 1], pixel_id).GetSizeOfPixelComponent()) * max(1, components)


def _check_header(path: Path, max_bytes: int | None) -> None:
    """Refuse a file from its header alone: not 3D scalar, or declaring more voxel data than ``max_bytes``.

    A corrupt or hostile header (``dim = 30000 x 30000 x 30000``) would otherwise make ITK allocate what it
    declares before it notices the file is short; reading only the header allocates nothing."""
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty (0 bytes)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(path, itk_reason(exc)) from None
    size = tuple(int(n) for n in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    declared = math.prod(size) * _pixel_bytes(reader.GetPixelID(), components)
    if max_bytes is not None and declared > max_bytes:
        raise ImageReadError(
            path, f"its header declares {'x'.join(map(str, size))} voxels ({declared / 2**30:,.1f} GiB), more than "
                  f"the {max_bytes / 2**20:,.0f} MiB an image may hold (ingest.max_image_mb); not read",
            "too_large")
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        raise ImageReadError(path, f"expected a 3D image, found {len(size)}D {size}", "unsupported")
    if components != 1:
        raise ImageReadError(path, f"expected a scalar image, found {components} components per voxel "
                                   "(vector/RGB or a 4th dimension stored as components)", "unsupported")


def read_image(path: Path, *, max_bytes: int | None = None) -> sitk.Image:
    """Read a 3D image file, or a DICOM series folder. Singleton 4th dimensions are dropped.

    A file's header is checked first (:func:`_check_header`): with ``max_bytes``, an image declaring more
    voxel data is refused before anything is allocated."""
    path = Path(path)
    if path.is_dir():
        image = read_dicom_series(path)
    else:
        if not path.exists():
            link = " (a broken symbolic link)" if path.is_symlink() else ""
            raise ImageReadError(path, f"the file does not exist{link}")
        _check_header(path, max_bytes)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageReadError(path, itk_reason(exc)) from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise ImageReadError(path, f"expected a 3D image, found {image.GetDimension()}D {image.GetSize()}",
                             "unsupported")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(path, "expected a scalar image, found a multi-component (vector/RGB) one", "unsupported")
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
