import pytest
import torch

from medfm.ssl.masking import num_visible, random_masking
from medfm.ssl.patches import patchify


@pytest.mark.parametrize("ratio,n,keep", [(0.75, 64, 16), (0.5, 10, 5), (0.0, 7, 7), (0.9, 4, 1)])
def test_masking_keeps_exactly_the_requested_ratio(ratio, n, keep):
    tokens = torch.randn(5, n, 8)
    visible, mask, ids_restore = random_masking(tokens, ratio)
    assert num_visible(n, ratio) == keep
    assert visible.shape == (5, keep, 8)
    assert (mask.sum(1) == n - keep).all()
    # the visible tokens are exactly the unmasked ones, in shuffled order
    for b in range(5):
        kept = tokens[b][mask[b] == 0]
        assert sorted(map(tuple, kept.tolist())) == sorted(map(tuple, visible[b].tolist()))
    # ids_restore un-shuffles: positions of kept tokens map back to unmasked slots
    assert torch.equal(ids_restore.argsort(1).argsort(1), ids_restore)


def test_masking_differs_per_sample_and_rejects_bad_ratio():
    _, mask, _ = random_masking(torch.zeros(8, 64, 4), 0.75)
    assert len({tuple(m.tolist()) for m in mask}) > 1
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.zeros(1, 4, 2), 1.0)


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_patchify_layout_keeps_every_pixel_once(channels):
    images = torch.randn(2, channels, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 16 * channels)
    # patch 1 is the top row, second column: pixels [0:4, 4:8], laid out (p, p, C)
    torch.testing.assert_close(patches[0, 1], images[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    assert torch.equal(patches.flatten().sort().values, images.flatten().sort().values)
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.zeros(1, 1, 10, 10), 4)
