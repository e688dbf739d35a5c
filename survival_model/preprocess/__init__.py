"""Preprocessing: reorient, co-register, bias-correct, resample, crop and normalise each patient's
canonical images onto one grid (DESIGN.md section 3.3). :mod:`.ops` holds the pure SimpleITK/numpy
image operations, :mod:`.patient` the per-patient driver with its QC checks."""
