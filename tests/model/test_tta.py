"""Test-time augmentation: the dihedral transforms, their inverses, and the equivariance of the average."""

import itertools

import pytest
import torch

from caswit_geo.engine.predict.config import TTA_PASSES
from caswit_geo.model.tta import TTA_MODES, apply, average_probabilities, invert

# the 8 symmetries of a 2 x 2 square [[a, b], [c, d]] written out by hand, as rows of the image:
# identity, quarter turns counter-clockwise, mirrors (left-right, up-down, both diagonals)
SQUARE = torch.tensor([[1, 2], [3, 4]])
HAND = {
    "identity": [[1, 2], [3, 4]],
    "turn 90 ccw": [[2, 4], [1, 3]],
    "turn 180": [[4, 3], [2, 1]],
    "turn 270 ccw": [[3, 1], [4, 2]],
    "mirror left-right": [[2, 1], [4, 3]],
    "mirror up-down": [[3, 4], [1, 2]],
    "transpose": [[1, 3], [2, 4]],
    "anti-transpose": [[4, 2], [3, 1]],
}


def test_modes_pass_counts_match_the_config():
    assert {m: len(t) for m, t in TTA_MODES.items()} == TTA_PASSES


def test_dihedral_is_the_eight_symmetries_of_the_square():
    images = sorted(apply(SQUARE, t).tolist() for t in TTA_MODES["dihedral"])
    assert images == sorted(HAND.values())


def test_flips_are_identity_and_the_two_mirrors_and_the_half_turn():
    images = sorted(apply(SQUARE, t).tolist() for t in TTA_MODES["flips"])
    expected = [HAND[k] for k in ("identity", "mirror left-right", "mirror up-down", "turn 180")]
    assert images == sorted(expected)


@pytest.mark.parametrize("t", TTA_MODES["dihedral"])
def test_invert_undoes_apply_on_non_square_batches(t):
    x = torch.arange(2 * 3 * 4 * 6).reshape(2, 3, 4, 6)
    assert torch.equal(invert(apply(x, t), t), x)
    assert apply(x, t).shape[-2:] == ((4, 6) if t[0] % 2 == 0 else (6, 4))


class Biased(torch.nn.Module):
    """A model without any symmetry: a 3 x 3 convolution plus a ramp over the rows, LR mixed in by its corner."""

    def __init__(self, k: int = 3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, k, 3, padding=1)

    def forward(self, hr, lr):
        ramp = torch.linspace(0, 2, hr.shape[-2])[:, None]
        return self.conv(hr) + ramp + lr[:, :1, :1, :1]


def test_average_commutes_with_every_symmetry_bit_for_bit():
    model = Biased().eval()
    hr, lr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        base = average_probabilities(model, hr, lr, "dihedral")
        plain = average_probabilities(model, hr, lr, "none")
        for t in TTA_MODES["dihedral"]:
            turned = average_probabilities(model, apply(hr, t), apply(lr, t), "dihedral")
            assert torch.equal(turned, apply(base, t)), t
        # without augmentation the model is not symmetric: the property above is not a given
        assert not torch.equal(average_probabilities(model, apply(hr, (1, False)), apply(lr, (1, False)), "none"),
                               apply(plain, (1, False)))
    assert torch.allclose(base.sum(1), torch.ones(2, 16, 16), atol=1e-6)


def test_average_is_the_mean_of_the_back_transformed_probabilities():
    model = Biased().eval()
    hr, lr = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        got = average_probabilities(model, hr, lr, "flips")
        brute = sum(invert(model(apply(hr, t), apply(lr, t)), t).softmax(1).double() for t in TTA_MODES["flips"]) / 4
    assert torch.allclose(got.double(), brute, atol=1e-9)


def test_flips_commute_with_mirrors():
    model = Biased().eval()
    hr, lr = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        base = average_probabilities(model, hr, lr, "flips")
        for t in itertools.product((0, 2), (False, True)):
            assert torch.equal(average_probabilities(model, apply(hr, t), apply(lr, t), "flips"), apply(base, t))
