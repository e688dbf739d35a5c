"""Analytic synthetic MRI head phantom with brain metastases.

Everything here is an implicit function of physical position, so one patient renders on any grid,
orientation, voxel size or patient position, deterministically and fast (numpy/scipy only).

Coordinates
-----------
Patient LPS in millimetres, as in DICOM/ITK: +x towards the patient's Left, +y Posterior,
+z Superior; the head centre is the physical origin. A :class:`Grid` follows SimpleITK: ``size`` is
``(nx, ny, nz)``, the physical point of continuous index ``(i, j, k)`` is
``origin + D @ (spacing * [i, j, k])``, and every rendered array is in numpy order ``(nz, ny, nx)``
(as ``sitk.GetArrayFromImage``): float32 for images, uint8 for label maps. A :class:`RigidMotion`
moves the patient: the image at scanner point ``p`` shows the phantom at ``T^-1(p)`` where
``T(q) = R q + t`` rotates about the head centre (``R = Rz @ Ry @ Rx``, angles in degrees).

Modules
-------
Each module imports only modules above it in this list. Their public names are all re-exported here:
callers write ``from survival_model.synthetic import phantom as ph``, then ``ph.render_case(...)``.

* :mod:`.tables`: tissue and label codes, :data:`SEQUENCES`, the intensity table (and what each
  sequence shows), the array type aliases and the small validation helpers.
* :mod:`.geometry`: :class:`Grid`, :class:`RigidMotion` and :func:`sample_motion`; the affine maps from
  voxel index to patient frame, and the separable random cosine fields everything random is made of.
* :mod:`.anatomy`: :class:`Head` and :func:`sample_head`, the anatomy model and its tissue
  classification; :func:`render_tissues`, :func:`tissues_at_points`, :func:`brain_mask`.
* :mod:`.lesions`: :class:`Lesion`, lesion shapes and rasterisation; :func:`render_labels`,
  :func:`lesion_summaries`, :func:`region_volumes` (true volumes) and :func:`sample_lesions`.
* :mod:`.bias`: :class:`BiasField` and :func:`sample_bias_field` (the scanner's receive field).
* :mod:`.rendering`: image formation; :func:`render_sequence`, :func:`render_case`, :func:`sequence_seed`.

Tissue codes (:func:`render_tissues`): 0 air, 1 scalp/fat (skin, subcutaneous and orbital fat),
2 skull (bone), 3 CSF (subarachnoid and sulcal), 4 GM, 5 WM (includes brainstem), 6 ventricles,
7 deep grey nuclei, 8 dura (falx, tentorium), 9 soft tissue (muscle, face, neck), 10 eye (vitreous).
Label codes (:func:`render_labels`, BraTS-METS): 0 background, 1 NETC, 2 SNFH, 3 ET.
"""

from __future__ import annotations

from survival_model.synthetic.phantom.anatomy import Head, brain_mask, render_tissues, sample_head, tissues_at_points
from survival_model.synthetic.phantom.bias import BiasField, sample_bias_field
from survival_model.synthetic.phantom.geometry import Grid, RigidMotion, sample_motion
from survival_model.synthetic.phantom.lesions import (
    Lesion,
    LesionSummary,
    lesion_summaries,
    region_volumes,
    render_labels,
    sample_lesions,
)
from survival_model.synthetic.phantom.rendering import render_case, render_sequence, sequence_seed
from survival_model.synthetic.phantom.tables import (
    AIR,
    CSF,
    DEEP_GM,
    DURA,
    ENHANCEMENT_AMPLITUDE,
    EYE,
    GM,
    INTRACRANIAL_TISSUES,
    LABEL_ET,
    LABEL_NETC,
    LABEL_SNFH,
    N_TISSUES,
    PARENCHYMA_TISSUES,
    SCALP,
    SEQUENCES,
    SKULL,
    SOFT_TISSUE,
    TISSUE_NAMES,
    VENTRICLE,
    WM,
)

__all__ = [
    "AIR",
    "CSF",
    "DEEP_GM",
    "DURA",
    "ENHANCEMENT_AMPLITUDE",
    "EYE",
    "GM",
    "INTRACRANIAL_TISSUES",
    "LABEL_ET",
    "LABEL_NETC",
    "LABEL_SNFH",
    "N_TISSUES",
    "PARENCHYMA_TISSUES",
    "SCALP",
    "SEQUENCES",
    "SKULL",
    "SOFT_TISSUE",
    "TISSUE_NAMES",
    "VENTRICLE",
    "WM",
    "BiasField",
    "Grid",
    "Head",
    "Lesion",
    "LesionSummary",
    "RigidMotion",
    "brain_mask",
    "lesion_summaries",
    "region_volumes",
    "render_case",
    "render_labels",
    "render_sequence",
    "render_tissues",
    "sample_bias_field",
    "sample_head",
    "sample_lesions",
    "sample_motion",
    "sequence_seed",
    "tissues_at_points",
]
