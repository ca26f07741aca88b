import pytest

from medfm.registry import Registry


def test_register_get_names():
    reg = Registry("head")

    @reg.register("linear")
    def linear():
        return 1

    assert reg.get("linear") is linear
    assert reg.names() == ["linear"]
    assert "linear" in reg


def test_unknown_name_suggests_nearest_and_duplicate_fails():
    reg = Registry("head")
    reg.register("linear")(lambda: 1)
    with pytest.raises(KeyError, match="Did you mean 'linear'"):
        reg.get("linaer")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("linear")(lambda: 2)
