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


FORK_FEW_SHOT = (
    "### COUNTRY OPINION DATABASE: FRANCE ###\n"
    "Format: [Survey Question] | [Opinion] | [Is_Most_Popular_Opinion]\n"
    "\n"
    'Q: "Does the sun rise in the East?" | Op: "Yes" | Is Most Popular Opinion in France: True\n'
    'Q: "Does the sun rise in the East?" | Op: "No" | Is Most Popular Opinion in France: False\n'
    'Q: "{d0q}" | Op: "{d0o}" | Is Most Popular Opinion in France: True\n'
    'Q: "{d1q}" | Op: "{d1o}" | Is Most Popular Opinion in France: False\n'
    "---\n"
    'Q: "{qq}" | Op: "{qo}" | Is Most Popular Opinion in France:'
)
FORK_ZERO_SHOT = (
    "### COUNTRY OPINION DATABASE: FRANCE ###\n"
    "Format: [Survey Question] | [Opinion] | [Is_Most_Popular_Opinion]\n"
    "\n"
    'Q: "{qq}" | Op: "{qo}" | Is Most Popular Opinion in France:'
)


def test_fork_layout_text_exactly(claims):
    """The fork's layout (the default): format line, one empty line, anchors, demos, ---, query;
    zero-shot base is the title, format line, empty line and query row only."""
    fields = {"d0q": claims[0].question, "d0o": claims[0].option, "d1q": claims[1].question, "d1o": claims[1].option,
              "qq": claims[5].question, "qo": claims[5].option}
    assert prompt_text(_request(claims, [0, 1], 5)) == FORK_FEW_SHOT.format(**fields)
    assert prompt_text(_request(claims, [], 5)) == FORK_ZERO_SHOT.format(**fields)
    assert not prompt_text(_request(claims, [], 5)).endswith(" ")  # the one documented fix: no trailing space


def test_database_layout_keeps_anchors_and_separator_when_zero_shot(claims):
    text = prompt_text(_request(claims, [0, 1, 2], 5), style="database")
    lines = text.split("\n")
    assert lines[0] == "### COUNTRY OPINION DATABASE: FRANCE ###"
    assert lines[1] == 'Format: Q: "<survey question>" | Op: "<answer option>" | Is Most Popular Opinion in France: True or False'
    assert lines[2] == 'Q: "Does the sun rise in the East?" | Op: "Yes" | Is Most Popular Opinion in France: True'
    assert lines[4] == f'Q: "{claims[0].question}" | Op: "{claims[0].option}" | Is Most Popular Opinion in France: True'
    assert lines[7] == "---" and text.endswith("in France:")
    zero = prompt_text(_request(claims, [], 3), style="database")
    assert zero.startswith(header_text("France", "database")) and zero.count("\n") == 5  # title, format, 2 anchors, ---
    with pytest.raises(ValueError, match="unknown prompt style"):
        prompt_text(_request(claims, [], 3), style="nope")


@pytest.mark.parametrize("style", ["fork", "database"])
@pytest.mark.parametrize("bos", [True, False])
def test_layouts_token_for_token(tokenizers, claims, style, bos):
    """Token ids: BOS (if the tokenizer adds one), then exactly the tokens of the layout's text,
    zero-shot and few-shot; the fork's empty line is in the header piece."""
    tok = tokenizers[bos]
    enc = PromptEncoder(tok, "base", style=style)
    for request in (_request(claims, [], 5), _request(claims, [0, 1, 2], 5)):
        text = prompt_text(request, style=style)
        assert enc.encode(request) == tok.encode(text)  # add_special_tokens: BOS iff the tokenizer adds one
        assert tok.decode(enc.encode(request)[len(enc.bos_ids) :]) == text
    zero = enc.pieces(_request(claims, [], 5))
    assert len(zero) == (3 if style == "fork" else 4)  # BOS, header, query | BOS, header with anchors, ---, query
    assert tok.decode(list(zero[1])).endswith("[Is_Most_Popular_Opinion]\n\n" if style == "fork" else "France: False\n")


def test_chat_instruction_and_a_template_file(tmp_path, claims, tokenizers):
    from persona_icm.prompts import CHAT_INSTRUCTION, chat_instruction, read_chat_template

    text = chat_instruction(claims[3])
    assert f'Question: "{claims[3].question}"' in text and f'Opinion: "{claims[3].option}"' in text
    assert "France" in text and text.endswith("Answer:") and "True or False" in text
    assert CHAT_INSTRUCTION.count("\n- ") == 5  # the five things to weigh
    template = tmp_path / "chat.txt"
    template.write_text('In {country}, is "{opinion}" the top answer to "{question}"? True or False.')
    custom = read_chat_template(template)
    assert chat_instruction(claims[3], custom) == f'In France, is "{claims[3].option}" the top answer to "{claims[3].question}"? True or False.'
    enc = PromptEncoder(tokenizers[True], "chat", chat_template=custom)
    assert "top answer" in tokenizers[True].decode(enc.encode(_request(claims, [], 3, "chat")))
    template.write_text("In {country}: {question}?")
    with pytest.raises(ValueError, match=r"missing \['opinion'\]"):
        read_chat_template(template)


@pytest.mark.parametrize(
    ("placeholder", "expected"),
    [
        ("{question:>100000000}", r"placeholder \{question:>100000000\} has a format spec or conversion"),
        ("{question!r}", r"placeholder \{question!r\} has a format spec or conversion"),
        ("{question:{opinion}}", r"placeholder \{question:\{opinion\}\} has a format spec"),
        ("{question.__class__}", r"unknown \['question.__class__'\]"),
        ("{question[0]}", r"unknown \['question\[0\]'\]"),
    ],
)
def test_a_chat_template_allows_only_plain_placeholders(tmp_path, placeholder, expected):
    """A width would build a prompt of that many characters; attribute or index access reads the claim's text."""
    from persona_icm.prompts import read_chat_template

    template = tmp_path / "chat.txt"
    template.write_text(f"In {{country}}: {placeholder} / {{question}} -> {{opinion}}?")
    with pytest.raises(ValueError, match=expected):
        read_chat_template(template)


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
