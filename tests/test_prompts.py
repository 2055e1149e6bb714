import pytest

from persona_icm.prompts import PromptEncoder, _appended_token, header_text, prompt_text
from persona_icm.scoring.base import ScoreRequest
from tests.tiny_model import build_tokenizer, make_claims


@pytest.fixture(scope="module")
def tokenizers():
    return {True: build_tokenizer(add_bos=True), False: build_tokenizer(add_bos=False)}


@pytest.fixture(scope="module")
def claims():
    return make_claims(12)


def _request(claims, demo_idx, query_idx, kind="base"):
    return ScoreRequest(tuple((claims[i], claims[i].gold) for i in demo_idx), claims[query_idx], kind)


def test_base_prompt_text_layout(claims):
    text = prompt_text(_request(claims, [0, 1, 2], 5))
    lines = text.split("\n")
    assert lines[0] == "### COUNTRY OPINION DATABASE: FRANCE ###"
    assert lines[1].startswith("Format: ")
    assert lines[2] == 'Q: "Does the sun rise in the East?" | Op: "Yes" | Is Most Popular Opinion in France: True'
    assert lines[3] == 'Q: "Does the sun rise in the East?" | Op: "No" | Is Most Popular Opinion in France: False'
    assert lines[4] == f'Q: "{claims[0].question}" | Op: "{claims[0].option}" | Is Most Popular Opinion in France: True'
    assert lines[5].endswith(": False")
    assert lines[7] == "---"
    assert lines[8] == f'Q: "{claims[5].question}" | Op: "{claims[5].option}" | Is Most Popular Opinion in France:'
    assert not text.endswith(" ") and text.endswith("in France:")


def test_zero_shot_base_keeps_header_and_anchors(claims):
    text = prompt_text(_request(claims, [], 3))
    assert text.startswith(header_text("France"))
    assert text.count("\n") == 5  # header, format, 2 anchors, ---


@pytest.mark.parametrize("bos", [True, False])
def test_candidate_ids_are_single_tokens_after_the_colon(tokenizers, claims, bos):
    tok = tokenizers[bos]
    enc = PromptEncoder(tok, "base")
    assert tok.decode([enc.true_id]) == " True" and tok.decode([enc.false_id]) == " False"
    request = _request(claims, [0, 1], 4)
    ids = enc.encode(request)
    with_true = tok.encode(prompt_text(request) + " True", add_special_tokens=False)
    assert with_true == ids[len(enc.bos_ids) :] + [enc.true_id]


def test_bos_handling(tokenizers, claims):
    request = _request(claims, [0, 1], 4)
    bos_tok, plain_tok = tokenizers[True], tokenizers[False]
    with_bos = PromptEncoder(bos_tok).encode(request)
    assert with_bos[0] == bos_tok.bos_token_id and with_bos.count(bos_tok.bos_token_id) == 1
    without = PromptEncoder(plain_tok).encode(request)
    assert bos_tok.bos_token_id not in without
    assert with_bos[1:] == without  # same vocabulary, same text tokens
    assert PromptEncoder(plain_tok, add_bos=True).encode(request) == with_bos
    assert PromptEncoder(bos_tok, add_bos=False).encode(request) == without


@pytest.mark.parametrize("bos", [True, False])
def test_pieces_equal_whole_string_tokenisation_for_byte_level_bpe(tokenizers, claims, bos):
    tok = tokenizers[bos]
    enc = PromptEncoder(tok)
    for demos, q in [([], 0), ([0, 1, 2, 3], 5), (list(range(11)), 11)]:
        request = _request(claims, demos, q)
        assert enc.encode(request) == tok.encode(prompt_text(request))


def test_prompts_sharing_demos_share_a_token_prefix(tokenizers, claims):
    enc = PromptEncoder(tokenizers[True])
    a = enc.encode(_request(claims, [0, 1, 2, 3, 4], 9))
    b = enc.encode(_request(claims, [0, 1, 2, 3, 5, 6], 10))
    pieces = enc.pieces(_request(claims, [0, 1, 2, 3], 9))
    shared = sum(len(p) for p in pieces[:-2])  # BOS + header + 4 demo rows
    assert a[:shared] == b[:shared]
    common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert shared <= common < shared + len(enc.pieces(_request(claims, [4], 9))[2])  # diverge inside row 5


def test_chat_prompt_and_candidates(tokenizers, claims):
    tok = tokenizers[True]
    enc = PromptEncoder(tok, "chat")
    assert tok.decode([enc.true_id]) == "True" and tok.decode([enc.false_id]) == "False"
    ids = enc.encode(_request(claims, [], 3, "chat"))
    text = tok.decode(ids)
    assert text.endswith("<|assistant|>\n") and claims[3].question in text
    assert ids.count(tok.bos_token_id) == 1  # the template's BOS, not a second one
    with pytest.raises(ValueError, match="zero-shot"):
        enc.encode(_request(claims, [0], 3, "chat"))
    with pytest.raises(ValueError, match="builds 'chat'"):
        enc.encode(_request(claims, [], 3, "base"))


def test_mixed_countries_and_bad_candidates_are_rejected(tokenizers, claims):
    enc = PromptEncoder(tokenizers[True])
    other = make_claims(2, "Japan")
    with pytest.raises(ValueError, match="one prompt holds one country"):
        enc.encode(ScoreRequest(((other[0], 1),), claims[0]))
    with pytest.raises(ValueError, match="exactly one new token"):
        _appended_token(tokenizers[True], "Is Most Popular Opinion in France:", " Zyzzyva")
