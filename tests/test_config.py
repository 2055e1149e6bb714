import pytest
from pydantic import ValidationError

from persona_icm.config import build_config


def test_presets_apply_and_overrides_win():
    smoke = build_config("smoke", {"icm": {"iterations": 7}})
    assert smoke.icm.iterations == 7
    assert smoke.icm.num_seed == 4
    assert build_config("paper").icm.alpha == 50.0
    assert build_config("seed").icm.alpha == 3.5


def test_bad_values_are_named():
    with pytest.raises(ValidationError, match="alpha"):
        build_config("seed", {"icm": {"alpha": -1}})
    with pytest.raises(ValueError, match="unknown preset"):
        build_config("nope")
