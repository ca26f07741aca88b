"""data.preprocess: named steps checked against MONAI called directly, errors at config load."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, Spacing
from omegaconf import OmegaConf

from medfm.config import load_config
from medfm.data.transforms.patches import center_patch, pad_to, patch_seeds, random_patches
from medfm.data.transforms.preprocess import (
    PreprocessError,
    build_step,
    check_same_preprocess,
    preprocess_transforms,
    resolve_preprocess,
)


def _volume(shape=(1, 10, 12, 8), spacing=(2.0, 2.0, 3.0), seed=0) -> MetaTensor:
    data = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2000 - 1000
    return MetaTensor(data, affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64)))


def _run(steps, image):
    cfg = OmegaConf.create({"preprocess": steps, "image_size": 32, "channels": 1})
    sample = {"image": image}
    for transform in preprocess_transforms(cfg)[:-1]:  # the last step turns slices first
        sample = transform(sample)
    return sample["image"]


def test_spacing_matches_monai_and_changes_the_shape_as_pixdim_predicts():
    image = _volume()
    ours = _run([{"name": "spacing", "pixdim": [1.0, 1.0, 1.5]}], image)
    theirs = Spacing(pixdim=(1.0, 1.0, 1.5), mode="bilinear", dtype=torch.float32)(image.clone())
    assert tuple(ours.shape) == tuple(theirs.shape) == (1, 19, 23, 15)  # (n - 1) * 2 + 1 voxels
    torch.testing.assert_close(ours.as_tensor(), theirs.as_tensor())
    np.testing.assert_allclose(np.diag(ours.affine.numpy())[:3], [1.0, 1.0, 1.5])


def test_orientation_matches_monai():
    image = MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.diag(torch.tensor([-1.0, 1, 1, 1])))
    ours = _run([{"name": "orientation", "axcodes": "RAS"}], image)
    theirs = Orientation(axcodes="RAS")(image.clone())
    torch.testing.assert_close(ours.as_tensor(), theirs.as_tensor())
    torch.testing.assert_close(ours.as_tensor(), image.as_tensor().flip(1))


def test_hu_windows_give_known_values_at_known_hounsfield_units():
    hu = torch.tensor([-1000.0, -160.0, 40.0, 240.0, 3000.0]).reshape(1, 5, 1, 1)
    soft = _run([{"name": "hu_window", "window": "soft_tissue"}], hu).flatten()  # 40 +- 200
    torch.testing.assert_close(soft, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    custom = _run([{"name": "hu_window", "window": [0, 100]}], hu).flatten()
    torch.testing.assert_close(custom, torch.tensor([0.0, 0.0, 0.9, 1.0, 1.0]))


def test_multi_window_gives_one_channel_per_window():
    hu = torch.tensor([-600.0, 40.0, 400.0]).reshape(1, 3, 1, 1)
    out = _run([{"name": "multi_window", "windows": ["lung", "soft_tissue", "bone"]}], hu)
    assert out.shape == (3, 3, 1, 1)
    torch.testing.assert_close(out[0].flatten()[0], torch.tensor(0.5))  # lung level
    torch.testing.assert_close(out[1].flatten()[1], torch.tensor(0.5))  # soft-tissue level
    torch.testing.assert_close(out[2].flatten()[2], torch.tensor(0.5))  # bone level


def test_crop_foreground_keeps_the_box_above_the_threshold():
    image = torch.zeros(1, 10, 10, 10)
    image[0, 2:5, 3:9, 4:6] = 1.0
    out = _run([{"name": "crop_foreground", "threshold": 0.5}], MetaTensor(image))
    assert tuple(out.shape) == (1, 3, 6, 2)


def test_zscore_uses_the_foreground_only():
    image = torch.zeros(1, 4, 4, 4)
    image[0, :2] = torch.arange(32.0).reshape(2, 4, 4) + 1
    out = _run([{"name": "zscore"}], image)
    fg = out[0, :2]
    assert abs(float(fg.mean())) < 1e-5 and abs(float(fg.std(unbiased=False)) - 1) < 1e-4


def test_null_means_the_classic_range_and_resize():
    cfg = load_config(None, ["data.image_size=16", "data.intensity_max=100"]).data
    assert resolve_preprocess(cfg) == [
        {"name": "scale_range", "a_min": 0.0, "a_max": 100.0},
        {"name": "resize_to_model", "size": 16, "depth": None},
    ]
    out = _run(resolve_preprocess(cfg), torch.full((1, 28, 20), 50.0))
    assert tuple(out.shape) == (1, 16, 16)
    torch.testing.assert_close(out, torch.full((1, 16, 16), 0.5))


def test_volumes_come_out_slices_first():
    cfg = OmegaConf.create({"preprocess": [{"name": "zscore"}], "channels": 1, "image_size": 8})
    sample = {"image": torch.rand(1, 6, 7, 3)}
    for transform in preprocess_transforms(cfg):
        sample = transform(sample)
    assert tuple(sample["image"].shape) == (1, 3, 6, 7)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            {"name": "spacng", "pixdim": [1, 1, 1]},
            r"\[0\] 'spacng': unknown step; did you mean 'spacing'",
        ),
        (
            {"name": "spacing", "pixdims": [1]},
            r"'spacing': unknown argument 'pixdims'; it takes pixdim",
        ),
        (
            {"name": "hu_window", "window": "lungs"},
            r"'hu_window': .*unknown HU window preset 'lungs'",
        ),
        ({"name": "spacing"}, r"'spacing': .*pixdim"),
        ({"pixdim": [1, 1, 1]}, r"each step is a mapping like \{name: "),
    ],
)
def test_a_bad_step_fails_at_config_load_naming_it(step, message):
    cfg = load_config(None, []).data
    cfg.preprocess = [step]
    with pytest.raises(PreprocessError, match=message):
        resolve_preprocess(cfg)


def test_pretrain_cli_rejects_an_unknown_step_before_any_run(tmp_path, capsys):
    from medfm.cli.main import main

    code = main(
        [
            "pretrain",
            f"out_dir={tmp_path / 'run'}",
            "data.path=none.npz",
            "data.preprocess=[{name: hu_windw}]",
        ]
    )
    assert code == 2
    assert "did you mean 'hu_window'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_preprocess_mismatch_downstream_cannot_pass_silently():
    trained = load_config(None, ["data.preprocess=[{name: zscore}]"]).data
    check_same_preprocess(trained, load_config(None, []).data, "enc")  # null: the encoder's own
    check_same_preprocess(trained, trained, "enc")
    other = load_config(None, ["data.preprocess=[{name: percentile}]"]).data
    with pytest.raises(PreprocessError, match="enc was pre-trained with data.preprocess="):
        check_same_preprocess(trained, other, "enc")


def test_build_step_gives_a_fresh_transform_per_call():
    assert build_step(0, {"name": "zscore"}) is not build_step(0, {"name": "zscore"})


# ------------------------------------------------------------------------------- patches


def test_random_patches_depend_only_on_the_seed_and_stay_inside():
    image = torch.arange(2 * 10 * 12 * 14, dtype=torch.float32).reshape(2, 10, 12, 14)
    a = random_patches(image, (4, 5, 6), 3, seed=7)
    b = random_patches(image, (4, 5, 6), 3, seed=7)
    assert a.shape == (3, 2, 4, 5, 6) and torch.equal(a, b)
    assert not torch.equal(a, random_patches(image, (4, 5, 6), 3, seed=8))
    for patch in a:  # every patch is a contiguous block of the image
        z, y, x = np.unravel_index(int(patch[0, 0, 0, 0]), (10, 12, 14))
        torch.testing.assert_close(patch, image[:, z : z + 4, y : y + 5, x : x + 6])


def test_a_volume_smaller_than_the_patch_is_padded_with_its_minimum():
    image = torch.rand(1, 3, 8, 8) + 1.0
    padded = pad_to(image, (6, 8, 8))
    assert padded.shape == (1, 6, 8, 8)
    assert float(padded[0, 0].max()) == float(image.min())  # a padded slice
    torch.testing.assert_close(padded[:, 1:4], image)
    assert random_patches(image, (6, 4, 4), 2, seed=0).shape == (2, 1, 6, 4, 4)


def test_center_patch_and_a_2d_image_in_a_3d_recipe():
    image = torch.arange(100.0).reshape(1, 10, 10)
    torch.testing.assert_close(center_patch(image, (4, 4)), image[:, 3:7, 3:7])
    with pytest.raises(ValueError, match=r"image ab12 is 2D \(10, 10\) but data.patch.size"):
        center_patch(image, (4, 4, 4), "ab12")


def test_patch_seeds_keep_the_sample_seed_for_one_patch():
    assert patch_seeds(123, 1).tolist() == [123]
    many = patch_seeds(123, 4)
    assert len(set(many.tolist())) == 4 and np.array_equal(many, patch_seeds(123, 4))
