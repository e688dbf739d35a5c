"""Per-patient image ingestion: read, validate, remap labels, write canonical NIfTI.

For one discovered case the :class:`IngestImages` stage (a :class:`survival_model.stage.Stage`) reads
every declared sequence and the mask (SimpleITK: NIfTI, NRRD or a DICOM series), checks them (readable,
3D scalar, finite, not constant; mask labels known, not empty, on the reference sequence's grid), remaps
the mask to the canonical labels (1 NETC, 2 SNFH, 3 ET) and writes the images under
``<work_dir>/ingest/images/<site>/<case id>/<key[:16]>/`` with a ``manifest.json``. The key is made of the
bytes of every declared raw file (:func:`source_digest`), the site's image declaration, label map and
co-registration, the ``ingest`` params and this module's code version. Images keep their own grid and
pixel type: resampling and registration are preprocessing's job. Metadata (DICOM tags such as names and
dates) is not carried into the canonical files.

Grid rule (documented fix): if the mask and its reference sequence have the same size and spacing and
their origins/directions differ by no more than ``ingest.grid_tolerance_mm`` /
``ingest.direction_tolerance`` (rounding in a writer), the mask takes the sequence's geometry and the
manifest records ``mask_geometry_fixed``. Anything larger is ``mask_grid_mismatch``.

Failures raise :class:`PatientDataError` internally and come back as a quarantined
:class:`~survival_model.patient.PatientOutcome` (stage ``images``); the folder then holds
``quarantine.json`` instead, so a bad patient is not re-read on every run either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk

from survival_model.config import IngestParams, Institution
from survival_model.errors import PatientDataError
from survival_model.fingerprint import DigestMemo, code_version, digest_memo_path, stable_hash
from survival_model.imageio import (
    ImageReadError,
    check_nifti,
    image_suffix,
    read_image,
    read_json,
    write_image,
    write_json,
)
from survival_model.ingest.discovery import CaseFiles
from survival_model.ingest.ids import normalise_id
from survival_model.ingest.privacy import Pseudonymiser, Redactor
from survival_model.patient import Patient, PatientOutcome
from survival_model.quarantine import QuarantineRecord
from survival_model.stage import Stage

log = logging.getLogger(__name__)

STAGE = "ingest_images"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.json"


def image_code_version() -> str:
    return code_version("survival_model.ingest.images", "survival_model.imageio",
                        "survival_model.ingest.ids", "survival_model.ingest.discovery")


def case_id_for(case: CaseFiles, institution: Institution, pseudonymiser: Pseudonymiser) -> str:
    source = normalise_id(case.source_id, institution.clinical.image_id_steps) or case.source_id
    return pseudonymiser.case_id(case.site, source)


def source_digest(case: CaseFiles, memo: DigestMemo | None = None) -> str:
    """Digest of the bytes of every declared raw file of the case (absent files count as absent)."""
    return stable_hash(case.content_digests(memo))


@dataclass(frozen=True)
class IngestImages(Stage[PatientOutcome]):
    """One discovered case's canonical images in ``<work_dir>/ingest/images/<site>/<case id>/<key[:16]>/``.

    ``case_id`` is the pseudonymous id (:func:`case_id_for`); the raw files' digests are memoised in the
    work directory (:func:`digest_memo_path`) under keyed hashes of their paths when ``memo_key``
    (``Pseudonymiser.memo_key``) is given, and hashed every time otherwise. Messages that leave the stage (its
    quarantine record, its log lines, an error it raises) name no source path or id (:meth:`redactor`)."""

    name: ClassVar[str] = "ingest-images"
    case_id: str
    case: CaseFiles
    institution: Institution
    params: IngestParams
    work_dir: Path
    memo_key: bytes | None = field(default=None, repr=False, compare=False)

    def label(self) -> str:
        return f"images-{self.case_id}"

    def redactor(self) -> Redactor:
        """The site's image folder as ``<source>``, the case's source id as its case id."""
        source_id = self.case.source_id
        normalised = normalise_id(source_id, self.institution.clinical.image_id_steps) or source_id
        ids = [(source_id, self.case_id)] + ([(normalised, self.case_id)] if len(normalised) >= 4 else [])
        return Redactor((self.institution.images.root,), tuple(ids))

    def source(self) -> str:
        """:func:`source_digest` of the case, memoised on the object (the key and the manifest hold it)."""
        digest: str | None = self.__dict__.get("_source")
        if digest is None:
            with self.redactor().errors():  # e.g. a file that cannot be read: its path names the patient
                if self.memo_key is None:
                    digest = source_digest(self.case)
                else:
                    memo = DigestMemo(digest_memo_path(self.work_dir), self.memo_key)
                    try:
                        digest = source_digest(self.case, memo)
                    finally:
                        memo.close()
            object.__setattr__(self, "_source", digest)  # frozen dataclass: the memo is not a field
        return digest

    def make_key(self) -> str:
        """File bytes (:meth:`source`), the site's image declaration and labels, params, code version."""
        return stable_hash(
            STAGE,
            image_code_version(),
            self.case_id,
            self.source(),
            self.institution.images.model_dump(mode="json", exclude={"root"}),
            self.institution.label_map,
            self.institution.acquisition.co_registered,
            self.params.model_dump(mode="json"),
        )

    def place(self) -> tuple[str, ...]:
        return ("ingest", "images", self.case.site, self.case_id)

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / MANIFEST] if (folder / MANIFEST).exists() else [folder / QUARANTINE]

    def compute(self, tmp: Path) -> None:
        site, case_id = self.case.site, self.case_id
        redact = self.redactor()
        try:
            with redact.errors():
                qc = _validate_and_write(self.case, self.institution, self.params, case_id, tmp)
                qc["qc"]["source_digest"] = self.source()
        except PatientDataError as exc:
            message = redact(exc.message)
            log.warning("quarantined (%s): %s", exc.reason, message)
            write_json({"site": site, "case_id": case_id, "reason": exc.reason, "message": message},
                       tmp / QUARANTINE)
        else:
            write_json({"site": site, "case_id": case_id, "key": self.key(), **qc}, tmp / MANIFEST)

    def load(self, folder: Path) -> PatientOutcome | None:
        site, case_id, key = self.case.site, self.case_id, self.key()
        if (folder / MANIFEST).is_file():
            manifest = read_json(folder / MANIFEST)
            files = manifest["files"]
            patient = Patient(
                site=site,
                case_id=case_id,
                folder=folder,
                images={s: folder / f for s, f in files["sequences"].items()},
                mask=folder / files["mask"],
                brain_mask=(folder / files["brain_mask"]) if files.get("brain_mask") else None,
                key=key,
                qc=manifest["qc"],
            )
            return PatientOutcome(site, case_id, key, patient)
        if (folder / QUARANTINE).is_file():
            record = read_json(folder / QUARANTINE)
            q = QuarantineRecord(site, case_id, "images", record["reason"], record["message"])
            return PatientOutcome(site, case_id, key, None, (q,))
        return None


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _scrub(text: str, case: CaseFiles) -> str:
    """Remove anything path- or id-like from a reader's message (it may name the patient)."""
    for path in sorted(case.present_paths(), key=lambda p: -len(str(p))):
        text = text.replace(str(path), "<file>").replace(path.name, "<file>")
    return text.replace(case.source_id, "<id>")


#: ImageReadError.kind -> quarantine reason.
_READ_REASONS = {"unreadable": "unreadable_image", "unsupported": "unsupported_image", "too_large": "image_too_large"}


def _read(case: CaseFiles, name: str, path: Path, case_id: str, params: IngestParams) -> sitk.Image:
    try:
        return read_image(path, max_bytes=int(params.max_image_mb * 2**20))
    except ImageReadError as exc:
        raise PatientDataError(_READ_REASONS[exc.kind],
                               f"{case_id}: {name} cannot be used: {_scrub(exc.detail, case)}") from None


def _check_file(image: sitk.Image, name: str, case_id: str, path: Path, case: CaseFiles) -> None:
    """Every voxel the file declares is there, and none is NaN or infinite (``non_finite``)."""
    array = sitk.GetArrayViewFromImage(image)
    bad = 0
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    try:
        if bad == 0 and image_suffix(path) in {".nii", ".nii.gz"}:
            # ITK reads a truncated .nii.gz without an error, and NaN in NIfTI as 0: the file itself is checked
            bad = check_nifti(path)
    except ImageReadError as exc:  # e.g. an uncompressed NIfTI named .nii.gz: this case only, not the run
        raise PatientDataError("unreadable_image",
                               f"{case_id}: {name} cannot be used: {_scrub(exc.detail, case)}") from None
    if bad:
        raise PatientDataError("non_finite", f"{case_id}: {name} has {bad} NaN/infinite voxels; "
                                             "re-export the image from the source")


def _check_values(image: sitk.Image, name: str, case_id: str, path: Path, case: CaseFiles) -> None:
    _check_file(image, name, case_id, path, case)
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0 or array.min() == array.max():
        value = array.min() if array.size else "empty"
        raise PatientDataError("empty_image", f"{case_id}: {name} is constant ({value}); the file holds no image")


def _geometry(image: sitk.Image) -> dict[str, Any]:
    return {
        "size": list(image.GetSize()),
        "spacing": [round(s, 6) for s in image.GetSpacing()],
        "origin": [round(o, 4) for o in image.GetOrigin()],
        "direction": [round(d, 6) for d in image.GetDirection()],
        "pixel_type": image.GetPixelIDTypeAsString(),
    }


def _grid_difference(a: sitk.Image, b: sitk.Image) -> tuple[bool, float, float]:
    """(same size and spacing, max origin difference mm, max direction entry difference)."""
    same_lattice = a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=1e-5)
    origin = float(np.max(np.abs(np.subtract(a.GetOrigin(), b.GetOrigin()))))
    direction = float(np.max(np.abs(np.subtract(a.GetDirection(), b.GetDirection()))))
    return same_lattice, origin, direction


def _on_grid(image: sitk.Image, reference: sitk.Image, params: IngestParams) -> str:
    """'same', 'fixable' (within tolerance) or 'different'."""
    same_lattice, origin, direction = _grid_difference(image, reference)
    if not same_lattice or origin > params.grid_tolerance_mm or direction > params.direction_tolerance:
        return "different"
    return "same" if origin == 0.0 and direction == 0.0 else "fixable"


def _describe_grid(image: sitk.Image) -> str:
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:.3g}" for s in image.GetSpacing())
    return f"{size} voxels at {spacing} mm"


def _remap_labels(mask: sitk.Image, label_map: dict[int, int], case_id: str, scheme: str) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(mask)
    if np.issubdtype(array.dtype, np.floating) and (
        not np.isfinite(array).all() or not np.all(np.equal(np.mod(array, 1), 0))
    ):
        raise PatientDataError("unknown_label", f"{case_id}: the mask has non-integer values; "
                                                "it must be a label map, not a probability map")
    values = np.unique(array).astype(np.int64)
    unknown = sorted(int(v) for v in values if int(v) not in label_map)
    if unknown:
        raise PatientDataError(
            "unknown_label",
            f"{case_id}: mask label value(s) {unknown} are not in the site's label scheme {scheme} "
            f"(known: {sorted(label_map)}); declare the scheme in institutions.<site>.labels",
        )
    lut_keys = np.array(sorted(label_map), dtype=np.int64)
    lut_values = np.array([label_map[k] for k in lut_keys], dtype=np.uint8)
    canonical = lut_values[np.searchsorted(lut_keys, array.astype(np.int64))]
    if not canonical.any():
        raise PatientDataError("empty_mask", f"{case_id}: the mask contains no tumour label "
                                             "(no NETC, SNFH or ET voxel)")
    out = sitk.GetImageFromArray(canonical)
    out.CopyInformation(mask)
    return out


def _strip_metadata(image: sitk.Image) -> sitk.Image:
    for key in image.GetMetaDataKeys():
        image.EraseMetaData(key)
    return image


def _tumour_components(mask: sitk.Image) -> int:
    """Connected components of the tumour (NETC or ET), 26-connectivity, no minimum size."""
    tumour = sitk.Cast((mask == 1) | (mask == 3), sitk.sitkUInt8)
    components = sitk.ConnectedComponent(tumour, True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(components)
    return int(stats.GetNumberOfLabels())


def _validate_and_write(
    case: CaseFiles, institution: Institution, params: IngestParams, case_id: str, out: Path
) -> dict[str, Any]:
    if case.outside:  # checked first: nothing of these is read (discovery did not digest them either)
        raise PatientDataError("outside_source", f"{case_id}: {', '.join(case.outside)} link(s) outside the "
                                                 "institution's image folder (images.root); not read: copy the "
                                                 "file(s) into the folder")
    missing = [s for s, p in case.sequences.items() if p is None]
    if missing:
        patterns = ", ".join(f"{s}: '{case.expected.get(s, '?')}'" for s in missing)
        raise PatientDataError("missing_sequence",
                               f"{case_id}: sequence(s) {', '.join(missing)} not found ({patterns}); a sequence the "
                               "site does not acquire is left out of institutions.<site>.images.sequences")
    if case.mask is None:
        raise PatientDataError("missing_segmentation", f"{case_id}: no segmentation found "
                                                       f"(pattern '{case.expected.get('mask', '?')}')")
    images: dict[str, sitk.Image] = {}
    present = {name: path for name, path in case.sequences.items() if path is not None}
    for name, path in present.items():
        image = _read(case, name, path, case_id, params)
        _check_values(image, name, case_id, path, case)
        images[name] = image
    reference_name = institution.images.mask_reference
    reference = images[reference_name]
    if institution.acquisition.co_registered:
        for seq, image in images.items():
            if _on_grid(image, reference, params) == "different":
                raise PatientDataError(
                    "sequence_grid_mismatch",
                    f"{case_id}: the site is declared co-registered but {seq} ({_describe_grid(image)}) is not on "
                    f"the grid of {reference_name} ({_describe_grid(reference)}); set "
                    "acquisition.co_registered: false for this site to have sequences registered",
                )
    mask = _read(case, "mask", case.mask, case_id, params)
    _check_file(mask, "the mask", case_id, case.mask, case)
    grid = _on_grid(mask, reference, params)
    if grid == "different":
        _, origin_diff, direction_diff = _grid_difference(mask, reference)
        raise PatientDataError(
            "mask_grid_mismatch",
            f"{case_id}: the mask ({_describe_grid(mask)}) is not on the grid of {reference_name} "
            f"({_describe_grid(reference)}; origins differ by {origin_diff:.2f} mm, directions by "
            f"{direction_diff:.3f}); it must be drawn on {reference_name}",
        )
    if grid == "fixable":
        mask.CopyInformation(reference)
    scheme = institution.labels if isinstance(institution.labels, str) else "(custom mapping)"
    canonical = _remap_labels(mask, institution.label_map, case_id, scheme)

    brain_mask_file = None
    suffix = ".nii.gz" if params.compress_images else ".nii"  # ITK gzips any .nii.gz, whatever the flag
    if case.brain_mask is not None:
        brain = _read(case, "brain_mask", case.brain_mask, case_id, params)
        _check_file(brain, "the brain mask", case_id, case.brain_mask, case)
        if _on_grid(brain, reference, params) == "different":
            raise PatientDataError("mask_grid_mismatch",
                                   f"{case_id}: the brain mask is not on the grid of {reference_name}")
        brain.CopyInformation(reference)
        brain = sitk.Cast(brain > 0, sitk.sitkUInt8)
        brain_mask_file = f"brain_mask{suffix}"
        write_image(_strip_metadata(brain), out / brain_mask_file, compress=params.compress_images)

    files = {}
    for seq, image in images.items():
        files[seq] = f"{seq}{suffix}"
        write_image(_strip_metadata(image), out / files[seq], compress=params.compress_images)
    write_image(canonical, out / f"seg{suffix}", compress=params.compress_images)

    labels = sitk.GetArrayViewFromImage(canonical)
    voxel_mm3 = float(np.prod(canonical.GetSpacing()))
    counts = np.bincount(labels.ravel(), minlength=4)
    qc = {
        "reference": reference_name,
        "geometry": {seq: _geometry(image) for seq, image in images.items()},
        "mask_geometry_fixed": grid == "fixable",
        "label_voxels": {"netc": int(counts[1]), "snfh": int(counts[2]), "et": int(counts[3])},
        "label_volume_mm3": {"netc": counts[1] * voxel_mm3, "snfh": counts[2] * voxel_mm3, "et": counts[3] * voxel_mm3},
        "tumour_components": _tumour_components(canonical),
    }
    return {"files": {"sequences": files, "mask": f"seg{suffix}", "brain_mask": brain_mask_file}, "qc": qc}
