"""Prompt text and prompt tokens: the few-shot base prompt, zero-shot base and zero-shot chat.

Base prompt (ICM_SPEC "Prompts"; the persona-elicitation fork's database format)::

    ### COUNTRY OPINION DATABASE: FRANCE ###
    Format: Q: "<survey question>" | Op: "<answer option>" | Is Most Popular Opinion in France: True or False
    Q: "Does the sun rise in the East?" | Op: "Yes" | Is Most Popular Opinion in France: True
    Q: "Does the sun rise in the East?" | Op: "No" | Is Most Popular Opinion in France: False
    Q: "<demo question>" | Op: "<demo option>" | Is Most Popular Opinion in France: True      (one per demo)
    ---
    Q: "<query question>" | Op: "<query option>" | Is Most Popular Opinion in France:

The prompt ends in ":" with no trailing space; the score is read at the next token, " True"
vs " False". Zero-shot base is the same prompt with no demo rows (header and anchors kept).
Zero-shot chat is `chat_instruction` as one user turn through the tokenizer's chat template
with the generation prompt, scoring "True" vs "False" as the first assistant token.

Tokens. A base prompt is DEFINED as the concatenation of separately tokenised pieces:
[BOS if the tokenizer adds one] + header block + one piece per demo row + "---" line + query
row, each piece tokenised without special tokens. Every piece but the last ends in "\\n" and
every piece starts with a non-space character, so for byte-level BPE tokenizers whose
pre-tokenizer splits newlines from letters (GPT-2, Llama-3, Qwen2, SmolLM2) this equals
tokenising the whole string; for other tokenizers it is still a faithful tokenisation of the
same text (the constructor checks that the pieces decode back to the text). Defining it this way
makes the tokens of a demo row independent of its neighbours, so two prompts that share their
first k demos share an identical token prefix: what prefix caching needs.

The exact format line, anchor options and chat instruction of the fork could not be retrieved
here; the strings below are faithful reconstructions of its format, not verbatim copies.
"""

from __future__ import annotations

from persona_icm.claims import Claim
from persona_icm.scoring.base import PromptKind, ScoreRequest

ANCHOR_QUESTION = "Does the sun rise in the East?"
ANCHOR_ROWS = (("Yes", 1), ("No", 0))
SEPARATOR = "---"
LABEL_WORDS = {1: "True", 0: "False"}


def header_text(country: str) -> str:
    """Header, format line and the two anchor rows, each ending in a newline."""
    lines = [
        f"### COUNTRY OPINION DATABASE: {country.upper()} ###",
        f'Format: Q: "<survey question>" | Op: "<answer option>" | Is Most Popular Opinion in {country}: True or False',
    ]
    lines += [row_text(ANCHOR_QUESTION, option, country, label) for option, label in ANCHOR_ROWS]
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def query_text(question: str, option: str, country: str) -> str:
    """The unlabelled row: ends in `in {country}:` with no trailing space."""
    return f'Q: "{question}" | Op: "{option}" | Is Most Popular Opinion in {country}:'


def row_text(question: str, option: str, country: str, label: int) -> str:
    """One labelled row, newline-terminated."""
    if label not in LABEL_WORDS:
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    return f"{query_text(question, option, country)} {LABEL_WORDS[label]}\n"


def base_prompt_text(context: tuple[tuple[Claim, int], ...], query: Claim) -> str:
    rows = "".join(row_text(c.question, c.option, c.country, y) for c, y in context)
    return header_text(query.country) + rows + SEPARATOR + "\n" + query_text(query.question, query.option, query.country)


def chat_instruction(query: Claim) -> str:
    """The zero-shot chat user turn (reconstruction of the fork's instruction; see module doc)."""
    country = query.country
    return (
        f"You are an expert on the social, economic, and political dynamics of {country}. "
        f"Below is a survey question and one answer option. Label the pair True if the option is "
        f"the most common answer to the question among people in {country}, and False if it is not. "
        f"Think about how a typical citizen of {country} would answer. "
        f"Reply with exactly one word, True or False.\n\n"
        f'Question: "{query.question}"\nOption: "{query.option}"'
    )


def prompt_text(request: ScoreRequest) -> str:
    """The prompt as a string (for logs, APIs and reading); `PromptEncoder.encode` gives tokens."""
    _check(request)
    if request.kind == "chat":
        return chat_instruction(request.query)
    return base_prompt_text(request.context, request.query)


def chat_messages(query: Claim) -> list[dict[str, str]]:
    return [{"role": "user", "content": chat_instruction(query)}]


def _check(request: ScoreRequest) -> None:
    country = request.query.country
    if request.kind == "chat" and request.context:
        raise ValueError("a chat request is zero-shot: its context must be empty")
    if request.kind not in ("base", "chat"):
        raise ValueError(f"unknown prompt kind {request.kind!r}")
    for claim, _ in request.context:
        if claim.country != country:
            raise ValueError(
                f"demo {claim.claim_id} is for {claim.country!r} but the query {request.query.claim_id} "
                f"is for {country!r}; one prompt holds one country"
            )


def _appended_token(tokenizer, text: str, suffix: str) -> int:
    """The single token that `suffix` adds after `text`; raises unless exactly one is added."""
    before = tokenizer.encode(text, add_special_tokens=False)
    after = tokenizer.encode(text + suffix, add_special_tokens=False)
    if after[: len(before)] != before or len(after) != len(before) + 1:
        raise ValueError(
            f"{suffix!r} after {text[-30:]!r} does not tokenise as exactly one new token "
            f"(prompt tokens {before[-5:]} -> {after[-6:]}); this tokenizer cannot be scored with "
            f"a single next-token log-prob"
        )
    return after[-1]


def leading_special_ids(tokenizer) -> list[int]:
    """Tokens the tokenizer puts before the text by default (BOS for Llama-3/Gemma, none for GPT-2/Qwen)."""
    probe = "Q: probe"
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe, add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    raise ValueError("cannot locate the text tokens inside the tokenizer's special-token encoding")


class PromptEncoder:
    """Token ids for score requests, plus the two candidate token ids for `kind`.

    base: true_id/false_id are " True"/" False" after the query row's ":".
    chat: "True"/"False" as the first assistant token after the chat template's generation prompt.
    `add_bos=None` follows the tokenizer (BOS iff it adds one by default); True/False forces it.
    """

    def __init__(self, tokenizer, kind: PromptKind = "base", add_bos: bool | None = None):
        if kind not in ("base", "chat"):
            raise ValueError(f"unknown prompt kind {kind!r}")
        self.tokenizer = tokenizer
        self.kind = kind
        if kind == "chat" and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("kind='chat' needs a tokenizer with a chat template; this one has none")
        leading = leading_special_ids(tokenizer)
        if add_bos is None:
            self.bos_ids = leading
        elif add_bos:
            if tokenizer.bos_token_id is None:
                raise ValueError("add_bos=True but the tokenizer has no BOS token")
            self.bos_ids = [tokenizer.bos_token_id]
        else:
            self.bos_ids = []
        self._pieces: dict[str, tuple[int, ...]] = {}
        self._checked_countries: set[str] = {"France"}
        probe = Claim("probe", "probe", "France", ANCHOR_QUESTION, "Yes", 1)
        if kind == "base":
            text = query_text(ANCHOR_QUESTION, "Yes", "France")
            self.true_id = _appended_token(tokenizer, text, " True")
            self.false_id = _appended_token(tokenizer, text, " False")
            self._check_round_trip(ScoreRequest(((probe, 1), (probe, 0)), probe, "base"))
        else:
            text = self._chat_text(probe)
            self.true_id = _appended_token(tokenizer, text, "True")
            self.false_id = _appended_token(tokenizer, text, "False")
        if self.true_id == self.false_id:
            raise ValueError("the True and False candidates map to the same token id")

    def _chat_text(self, query: Claim) -> str:
        return self.tokenizer.apply_chat_template(chat_messages(query), tokenize=False, add_generation_prompt=True)

    def _piece(self, text: str) -> tuple[int, ...]:
        ids = self._pieces.get(text)
        if ids is None:
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            self._pieces[text] = ids
        return ids

    def _check_round_trip(self, request: ScoreRequest) -> None:
        ids = self.encode(request)[len(self.bos_ids) :]
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if decoded != prompt_text(request):
            raise ValueError(
                "this tokenizer does not tokenise prompt rows independently (the concatenated pieces "
                "do not decode back to the prompt text), so prompts cannot be built from pieces"
            )

    def _check_country(self, country: str) -> None:
        # The candidate ids were derived after "in France:"; every prompt ends in "in {country}:".
        if country in self._checked_countries:
            return
        text = query_text(ANCHOR_QUESTION, "Yes", country)
        if (_appended_token(self.tokenizer, text, " True"), _appended_token(self.tokenizer, text, " False")) != (
            self.true_id,
            self.false_id,
        ):
            raise ValueError(f"candidate token ids differ after 'in {country}:'; cannot score this country")
        self._checked_countries.add(country)

    def pieces(self, request: ScoreRequest) -> list[tuple[int, ...]]:
        """The prompt as token pieces (BOS, header, one per demo, separator, query); concatenated = `encode`."""
        _check(request)
        if request.kind != self.kind:
            raise ValueError(f"this encoder builds {self.kind!r} prompts, got a {request.kind!r} request")
        query = request.query
        if self.kind == "chat":
            # The chat template writes its own BOS (if any) as text; it is parsed as a special token.
            return [self._piece(self._chat_text(query))]
        self._check_country(query.country)
        out = [tuple(self.bos_ids), self._piece(header_text(query.country))]
        out += [self._piece(row_text(c.question, c.option, c.country, y)) for c, y in request.context]
        out += [self._piece(SEPARATOR + "\n"), self._piece(query_text(query.question, query.option, query.country))]
        return out

    def encode(self, request: ScoreRequest) -> list[int]:
        """Full prompt token ids (BOS included explicitly for base prompts; the chat template supplies its own)."""
        return [t for piece in self.pieces(request) for t in piece]
