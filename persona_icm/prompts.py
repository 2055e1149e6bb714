"""Prompt text and prompt tokens: the few-shot base prompt, zero-shot base and zero-shot chat.

Two layouts (`ModelSpec.prompts.style`). "fork" (the default) is the persona-elicitation fork's::

    ### COUNTRY OPINION DATABASE: FRANCE ###
    Format: [Survey Question] | [Opinion] | [Is_Most_Popular_Opinion]
    <empty line>
    Q: "Does the sun rise in the East?" | Op: "Yes" | Is Most Popular Opinion in France: True
    Q: "Does the sun rise in the East?" | Op: "No" | Is Most Popular Opinion in France: False
    Q: "<demo question>" | Op: "<demo option>" | Is Most Popular Opinion in France: True      (one per demo)
    ---
    Q: "<query question>" | Op: "<query option>" | Is Most Popular Opinion in France:

and its zero-shot base prompt is the title, the format line, the empty line and the query row
(no anchor rows, no `---`). "database" is this project's earlier layout: the format line
`Format: Q: "<survey question>" | Op: "<answer option>" | Is Most Popular Opinion in France: True or False`,
no empty line, and a zero-shot prompt that keeps the anchors and the `---`.

The departures from the fork's base prompt, in both layouts: a prompt ends in ":" with no trailing
space (the fork's trailing space splits " True" into two tokens for Llama-3-style tokenizers), and
the score is the exact log P(" True") - log P(" False") at the next token. docs/method.md
("Departures from the fork and the paper") lists the others.

Zero-shot chat is one user turn through the tokenizer's chat template with the generation prompt,
scoring "True" vs "False" as the first assistant token. Its text is `CHAT_INSTRUCTION` (the
fork's content and layout in this project's words: the country's public opinion, the things to
weigh, the quoted question and opinion, True or False only, ending in "Answer:"), or a template
file of the user's (`ModelSpec.prompts.chat_template`) with {country}, {question} and {opinion}.

Tokens. A base prompt is DEFINED as the concatenation of separately tokenised pieces:
[BOS if the tokenizer adds one] + header block + one piece per demo row + "---" line + query
row, each piece tokenised without special tokens. Every piece but the last ends in "\\n" and
every piece starts with a non-space character, so for byte-level BPE tokenizers whose
pre-tokenizer splits newlines from letters (GPT-2, Llama-3, Qwen2, SmolLM2) this equals
tokenising the whole string; for other tokenizers it is still a faithful tokenisation of the
same text (the constructor checks that the pieces decode back to the text). Defining it this way
makes the tokens of a demo row independent of its neighbours, so two prompts that share their
first k demos share an identical token prefix: what prefix caching needs.
"""

from __future__ import annotations

from persona_icm.types import Claim, PromptKind, ScoreRequest

ANCHOR_QUESTION = "Does the sun rise in the East?"
ANCHOR_ROWS = (("Yes", 1), ("No", 0))
SEPARATOR = "---"
LABEL_WORDS = {1: "True", 0: "False"}
STYLES = ("fork", "database")

CHAT_INSTRUCTION = """You know public opinion in {country} well. Decide whether the opinion below is the answer that the largest share of people in {country} would pick for this survey question.

Weigh what you know about {country}:
- its cultural values and social norms
- its political landscape and the political views most people hold
- religious and moral attitudes
- economic conditions and priorities
- its demographic makeup and the differences between generations

Question: "{question}"
Opinion: "{opinion}"

Would this opinion be the single most common response in {country}? Reply with True or False only.

Answer:"""


def format_line(country: str, style: str = "fork") -> str:
    if style == "fork":
        return "Format: [Survey Question] | [Opinion] | [Is_Most_Popular_Opinion]\n\n"
    if style == "database":
        return f'Format: Q: "<survey question>" | Op: "<answer option>" | Is Most Popular Opinion in {country}: True or False\n'
    raise ValueError(f"unknown prompt style {style!r}; choose one of {STYLES}")


def header_text(country: str, style: str = "fork", anchors: bool = True) -> str:
    """Title, format line (fork: and an empty line) and, with `anchors`, the two anchor rows."""
    text = f"### COUNTRY OPINION DATABASE: {country.upper()} ###\n" + format_line(country, style)
    if anchors:
        text += "".join(row_text(ANCHOR_QUESTION, option, country, label) for option, label in ANCHOR_ROWS)
    return text


def zero_shot_is_bare(style: str) -> bool:
    """The fork's zero-shot base prompt has no anchor rows and no separator; "database" keeps both."""
    return style == "fork"


def query_text(question: str, option: str, country: str) -> str:
    """The unlabelled row: ends in `in {country}:` with no trailing space."""
    return f'Q: "{question}" | Op: "{option}" | Is Most Popular Opinion in {country}:'


def row_text(question: str, option: str, country: str, label: int) -> str:
    """One labelled row, newline-terminated."""
    if label not in LABEL_WORDS:
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    return f"{query_text(question, option, country)} {LABEL_WORDS[label]}\n"


def base_prompt_text(context: tuple[tuple[Claim, int], ...], query: Claim, style: str = "fork") -> str:
    query_row = query_text(query.question, query.option, query.country)
    if not context and zero_shot_is_bare(style):
        return header_text(query.country, style, anchors=False) + query_row
    rows = "".join(row_text(c.question, c.option, c.country, y) for c, y in context)
    return header_text(query.country, style) + rows + SEPARATOR + "\n" + query_row


def chat_instruction(query: Claim, template: str | None = None) -> str:
    """The zero-shot chat user turn: CHAT_INSTRUCTION, or the user's template, filled in."""
    return (template or CHAT_INSTRUCTION).format(country=query.country, question=query.question, opinion=query.option)


def read_chat_template(path) -> str:
    """A chat template file's text; ValueError when it lacks a placeholder, has an unknown one
    (attribute or index access included) or one with a format spec or conversion."""
    from pathlib import Path
    from string import Formatter

    text = Path(path).read_text()
    parsed = [(name, spec, conversion) for _, name, spec, conversion in Formatter().parse(text) if name is not None]
    for name, spec, conversion in parsed:
        if spec or conversion:  # a width such as {question:>100000000} builds a prompt of that size
            raise ValueError(
                f"chat template {path}: placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} has a format spec or conversion; write it as plain {{{name}}}"
            )
    fields = {name for name, _, _ in parsed}
    missing, unknown = {"country", "question", "opinion"} - fields, fields - {"country", "question", "opinion"}
    if missing or unknown:
        raise ValueError(
            f"chat template {path}: needs the placeholders {{country}}, {{question}} and {{opinion}} "
            f"(missing {sorted(missing)}, unknown {sorted(unknown)}; write literal braces as {{{{ and }}}})"
        )
    return text


def prompt_text(request: ScoreRequest, style: str = "fork", chat_template: str | None = None) -> str:
    """The prompt as a string (for logs, APIs and reading); `PromptEncoder.encode` gives tokens."""
    _check(request)
    if request.kind == "chat":
        return chat_instruction(request.query, chat_template)
    return base_prompt_text(request.context, request.query, style)


def chat_messages(query: Claim, template: str | None = None) -> list[dict[str, str]]:
    return [{"role": "user", "content": chat_instruction(query, template)}]


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
    `style`: the base layout ("fork" or "database"); `chat_template`: the chat instruction's text.
    """

    def __init__(
        self, tokenizer, kind: PromptKind = "base", add_bos: bool | None = None, style: str = "fork",
        chat_template: str | None = None,
    ):
        if kind not in ("base", "chat"):
            raise ValueError(f"unknown prompt kind {kind!r}")
        format_line("France", style)  # refuses an unknown style
        self.tokenizer = tokenizer
        self.style = style
        self.chat_template = chat_template
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
        self._bos = tuple(self.bos_ids)  # one object: pieces are compared and memoised by identity downstream
        self._pieces: dict[str, tuple[int, ...]] = {}
        self._rows: dict[tuple[Claim, int], tuple[int, ...]] = {}  # a context row -> its piece
        self._headers: dict[tuple[str, bool], tuple[int, ...]] = {}  # (country, anchors) -> the header's piece
        self._checked_countries: set[str] = {"France"}
        probe = Claim("probe", "probe", "France", ANCHOR_QUESTION, "Yes", 1)
        if kind == "base":
            text = query_text(ANCHOR_QUESTION, "Yes", "France")
            self.true_id = _appended_token(tokenizer, text, " True")
            self.false_id = _appended_token(tokenizer, text, " False")
            self._check_round_trip(ScoreRequest(((probe, 1), (probe, 0)), probe, "base"))
            self._check_round_trip(ScoreRequest((), probe, "base"))
        else:
            text = self._chat_text(probe)
            self.true_id = _appended_token(tokenizer, text, "True")
            self.false_id = _appended_token(tokenizer, text, "False")
        if self.true_id == self.false_id:
            raise ValueError("the True and False candidates map to the same token id")

    def _chat_text(self, query: Claim) -> str:
        return self.tokenizer.apply_chat_template(
            chat_messages(query, self.chat_template), tokenize=False, add_generation_prompt=True
        )

    def _piece(self, text: str) -> tuple[int, ...]:
        ids = self._pieces.get(text)
        if ids is None:
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            self._pieces[text] = ids
        return ids

    def _header(self, country: str, anchors: bool) -> tuple[int, ...]:
        ids = self._headers.get((country, anchors))
        if ids is None:
            ids = self._headers[(country, anchors)] = self._piece(header_text(country, self.style, anchors))
        return ids

    def _row(self, row: tuple[Claim, int]) -> tuple[int, ...]:
        ids = self._rows.get(row)
        if ids is None:
            claim, label = row
            ids = self._rows[row] = self._piece(row_text(claim.question, claim.option, claim.country, label))
        return ids

    def _check_round_trip(self, request: ScoreRequest) -> None:
        ids = self.encode(request)[len(self.bos_ids) :]
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if decoded != prompt_text(request, self.style, self.chat_template):
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
        query_row = self._piece(query_text(query.question, query.option, query.country))
        if not request.context and zero_shot_is_bare(self.style):
            return [self._bos, self._header(query.country, anchors=False), query_row]
        out = [self._bos, self._header(query.country, anchors=True)]
        out += map(self._row, request.context)
        return [*out, self._piece(SEPARATOR + "\n"), query_row]

    def encode(self, request: ScoreRequest) -> list[int]:
        """Full prompt token ids (BOS included explicitly for base prompts; the chat template supplies its own)."""
        return [t for piece in self.pieces(request) for t in piece]
