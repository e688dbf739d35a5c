"""The declared heavy dependencies install and work together (what later stages build on)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def test_torch_and_timm_build_a_four_channel_backbone_offline() -> None:
    import timm
    import torch

    model = timm.create_model("resnet10t", pretrained=False, in_chans=4, num_classes=0)
    with torch.no_grad():
        features = model(torch.zeros(2, 4, 32, 32))
    assert features.shape == (2, model.num_features)


def test_pyradiomics_extracts_features_under_numpy_2() -> None:
    from radiomics import featureextractor

    assert int(np.__version__.split(".")[0]) >= 2
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.uniform(0, 100, (12, 12, 12)).astype(np.float32))
    mask_array = np.zeros((12, 12, 12), dtype=np.uint8)
    mask_array[3:9, 3:9, 3:9] = 1
    mask = sitk.GetImageFromArray(mask_array)
    extractor = featureextractor.RadiomicsFeatureExtractor()
    extractor.disableAllFeatures()
    extractor.enableFeatureClassByName("shape")
    extractor.enableFeatureClassByName("firstorder")
    features = extractor.execute(image, mask)
    assert float(features["original_shape_VoxelVolume"]) == 216.0
    assert 0 < float(features["original_firstorder_Mean"]) < 100
