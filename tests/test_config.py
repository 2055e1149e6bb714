import pytest
from pydantic import ValidationError

from persona_icm.config import build_config


def test_presets_apply_and_overrides_win():
    smoke = build_config("smoke", {"icm": {"iterations": 7}})
    assert smoke.icm.iterations == 7
    assert smoke.icm.num_seed == 4
    assert build_config("paper").icm.alpha == 50.0
    assert build_config("seed").icm.alpha == 3.5


def test_fork_preset_is_the_seed_preset_with_the_forks_search_and_kv_dtype():
    fork, seed = build_config("fork"), build_config("seed")
    assert fork.icm.consistency is False and fork.icm.context_order == "claim" and fork.icm.seed_claims == "first"
    assert fork.base_model.vllm.kv_cache_dtype == "fp8"
    assert seed.icm.seed_claims == "random" and seed.icm.consistency and seed.base_model.vllm.kv_cache_dtype == "auto"
    changed = {"preset", "icm", "base_model", "base_models"}
    assert fork.model_dump(exclude=changed) == seed.model_dump(exclude=changed)
    assert fork.base_models == [fork.base_model] and seed.base_models == [seed.base_model]
    forked = {"consistency", "context_order", "seed_claims"}
    assert fork.icm.model_dump(exclude=forked) == seed.icm.model_dump(exclude=forked)
    assert fork.base_model.model_dump(exclude={"vllm"}) == seed.base_model.model_dump(exclude={"vllm"})
    assert fork.base_model.vllm.model_dump(exclude={"kv_cache_dtype"}) == seed.base_model.vllm.model_dump(exclude={"kv_cache_dtype"})


def test_bad_values_are_named():
    with pytest.raises(ValidationError, match="alpha"):
        build_config("seed", {"icm": {"alpha": -1}})
    with pytest.raises(ValueError, match="unknown preset"):
        build_config("nope")


def test_k_is_1500_for_dataset_all_unless_given():
    """docs/method.md "Search": fork defaults K 1000 (1500 for `all`)."""
    from persona_icm.config import IcmConfig, RunConfig

    assert build_config("seed").icm.iterations == 1000
    assert build_config("seed", {"data": {"dataset": "all"}}).icm.iterations == 1500
    assert build_config("seed", {"data": {"dataset": "all"}, "icm": {"iterations": 7}}).icm.iterations == 7
    assert build_config("smoke", {"data": {"dataset": "all"}}).icm.iterations == 8  # the preset gives K
    assert RunConfig(data={"dataset": "all"}, icm=IcmConfig(alpha=2.0)).icm.iterations == 1500
    assert RunConfig(data={"dataset": "all"}, icm=IcmConfig(iterations=5)).icm.iterations == 5
    again = RunConfig.model_validate_json(build_config("seed", {"data": {"dataset": "all"}}).model_dump_json())
    assert again.icm.iterations == 1500
