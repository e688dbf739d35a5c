"""Feature extraction: volumetric features, intensity statistics, radiomics, the feature table, ComBat.

* :mod:`.volumetric` — volumes (mm³), ratios, lesion count and largest lesion from the canonical label
  map; per-region intensity statistics of the preprocessed images (plain numpy / SimpleITK, fast).
* :mod:`.radiomics` — pyradiomics per region and sequence, driven by
  ``survival_model/resources/radiomics.yaml``; its settings digest and version for cache keys.
* :mod:`.table` — one patient's feature row and the cohort's table (``vol_*``, ``int_*``, ``rad_*``
  joined with the canonical clinical fields) and its schema.
* :mod:`.harmonise` — :class:`~survival_model.features.harmonise.SiteHarmoniser`, ComBat site
  harmonisation fitted on training rows only (used by the training stage, inside each fold).
* :mod:`.stage` — the content-keyed per-patient stage and the persisted table.

Regions: ``et`` {3}, ``netc`` {1}, ``snfh`` {2}, ``tc`` {1, 3}, ``wt`` {1, 2, 3} of the canonical labels
(1 NETC, 2 SNFH, 3 ET).
"""
