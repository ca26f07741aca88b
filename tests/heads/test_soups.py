"""Tests for medfm.heads.soups: uniform and greedy weight averaging (Wortsman et al. 2022)."""

import pytest
import torch

from medfm.heads.soups import average_state_dicts, greedy_soup, uniform_soup


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_a_soup_of_identical_models_equals_the_model():
    model = _model(0)
    state = model.state_dict()
    soup = uniform_soup([state, {k: v.clone() for k, v in state.items()}, state])
    souped = _model(1)
    souped.load_state_dict(soup)
    x = torch.randn(5, 4)
    model.eval(), souped.eval()
    torch.testing.assert_close(souped(x), model(x), rtol=0, atol=0)
    for key, value in state.items():
        assert torch.equal(soup[key], value), key


def test_uniform_soup_is_the_elementwise_mean_and_keeps_integer_buffers():
    a, b = _model(0).state_dict(), _model(1).state_dict()
    b["1.num_batches_tracked"] = torch.tensor(7)
    soup = uniform_soup([a, b])
    torch.testing.assert_close(soup["0.weight"], (a["0.weight"] + b["0.weight"]) / 2)
    assert soup["1.num_batches_tracked"] == a["1.num_batches_tracked"]
    assert soup["0.weight"].dtype == a["0.weight"].dtype


def test_greedy_soup_adds_members_only_when_validation_does_not_drop():
    # one parameter; the validation score peaks at w = 1
    states = [{"w": torch.tensor([v])} for v in (1.2, 0.8, 5.0, 1.0)]
    score = lambda s: -abs(float(s["w"]) - 1.0)  # noqa: E731
    soup, kept = greedy_soup(states, score)
    # order by score: 1.0 (idx 3), 1.2 / 0.8 tie (idx 0, 1), 5.0 (idx 2)
    # {1.0, 1.2} -> 1.1 is worse than 1.0 alone: rejected; {1.0, 0.8} -> 0.9: rejected;
    # {1.0, 5.0} -> 3.0: rejected
    assert kept == [3] and float(soup["w"]) == pytest.approx(1.0)
    soup, kept = greedy_soup([{"w": torch.tensor([v])} for v in (0.8, 1.2, 3.0)], score)
    assert kept[:2] in ([0, 1], [1, 0]) and 2 not in kept
    assert float(soup["w"]) == pytest.approx(1.0)


def test_soups_refuse_mismatched_models():
    with pytest.raises(ValueError, match="different parameters"):
        average_state_dicts([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
    with pytest.raises(ValueError, match="at least one"):
        uniform_soup([])
