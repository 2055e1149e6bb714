"""transformers backend: exact next-token log-odds, batched, with shared-prefix KV reuse.

Two paths give the same numbers (tests check 1e-5 against one-prompt-at-a-time log_softmax):

- `prefix_reuse=False`: left-padded batches, `position_ids = cumsum(mask) - 1`, `logits_to_keep=1`.
- `prefix_reuse=True`: computes each distinct prefix of the prompts once: the tokens of their
  prefix trie (`trie_tokens` in benchmarks/bench_scoring.py), plus one token for a prompt that is
  a prefix of another; duplicates are scored once. Exception: a branch of the trie that shares
  fewer than `pass_tokens` (128) tokens beyond where the walk goes next is computed once per
  prompt, in the batch of its neighbours, instead of in two forward passes of its own
  (evaluation's two options of one question: measured on gemma-3-270m, 96 queries on one
  10-demo context, 2 passes per question took 9.0 s, batches of 8 took 5.8 s). The walk (`trie_walk`) visits the prompts in
  depth-first order of the token trie, smaller subtrees first (leave-one-out prompts come out in
  index order), and splits each prompt at its fork: the part it shares with a neighbour in that
  order lies on one base KV cache (a single row, extended and cropped as the walk moves through
  the trie), the rest is its own suffix (at least its last token). Suffixes wait until the walk
  would crop the base below one of their forks, then run in batches, each row on a copy of the
  base's first `fork` tokens: a trie node is computed once and forked for its children.
  Rows forked at different depths share a batch: each row's prefix copy is right-aligned
  (masked zeros on its left), its suffix right-padded with positions continuing from its fork,
  so its real tokens fill contiguous cache slots (sliding-window layers measure the window in
  slots: a hole between prefix and suffix would shorten it).
  A batch takes suffixes of similar length, longest first: at most `batch_size` rows, pad slots
  at most `max_padding` of its suffix tokens, and its rows' KV (prefix + suffix) within
  `kv_budget_bytes` (one row always runs). `forward_tokens` counts the token slots run through
  the model, padding included.
  Sliding-window layers get a full cache; their masks keep the window. Models with other layer
  kinds (linear or chunked attention) score without reuse.

Numbers depend only on the prompt, up to float reassociation between batch shapes (~1e-6).
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence

import torch

from persona_icm.prompts import PromptEncoder
from persona_icm.scoring.base import (
    CallLog,
    PromptKind,
    ScoreRequest,
    check_lengths,
    prompt_limit,
    resolve_dtype,
)


def common_prefix_length(a: Sequence, b: Sequence, start: int = 0) -> int:
    """Length of the common prefix of `a` and `b`, known to be at least `start`."""
    n = min(len(a), len(b))
    i = start
    while i < n and a[i] == b[i]:
        i += 1
    return i


def trie_order(keys: Sequence[Sequence]) -> list[int]:
    """Indices of `keys` in depth-first order of their prefix trie, smaller subtrees first (ties: input order)."""
    out: list[int] = []
    stack = [(list(range(len(keys))), 0)] if keys else []
    while stack:
        idx, depth = stack.pop()
        first = keys[idx[0]]
        depth = min((common_prefix_length(first, keys[i], depth) for i in idx[1:]), default=len(first))
        groups: dict = defaultdict(list)  # the children where the group's common chain branches
        for i in idx:
            if len(keys[i]) == depth:
                out.append(i)
            else:
                groups[keys[i][depth]].append(i)
        children = sorted(groups.values(), key=lambda g: (len(g), g[0]))
        stack.extend((g, depth + 1) for g in reversed(children))
    return out


def trie_walk(
    order: list[int], ids: list[list[int]], pass_tokens: int = 0
) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Plan the walk over distinct prompts `ids` in trie order: [(base path, [(prompt, fork), ...]), ...].

    A prompt's fork is where its own suffix starts: past what it shares with its neighbours in
    `order` (that part lies on the base path, computed once) and before its last token (whose
    logits it needs). A group ends when the next prompt's path would crop a waiting fork away,
    unless the waiting suffixes would recompute fewer than `pass_tokens` tokens by forking where
    the next prompt's path leaves the group's: then they fork there and the group goes on (a
    group is one more forward pass of the base and one of its suffixes; a few shared tokens,
    as two options of one question, are cheaper to compute twice). Every fork of a group is a
    prefix of the group's path."""
    groups: list[tuple[list[int], list[tuple[int, int]]]] = []
    path: list[int] = []
    waiting: list[tuple[int, int]] = []
    for pos, i in enumerate(order):
        prompt = ids[i]
        shared = [common_prefix_length(prompt, ids[order[q]]) for q in (pos - 1, pos + 1) if 0 <= q < len(order)]
        fork = min(max(shared, default=0), len(prompt) - 1)
        kept = common_prefix_length(path, prompt[:fork])
        recomputed = sum(f - kept for _, f in waiting if f > kept)
        if recomputed >= max(pass_tokens, 1):
            groups.append((path, waiting))
            waiting = []
        elif recomputed:
            waiting = [(w, min(f, kept)) for w, f in waiting]
        path = prompt[:fork]
        waiting.append((i, fork))
    if waiting:
        groups.append((path, waiting))
    return groups


class HFScorer(CallLog):
    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 8,
        prefix_reuse: bool = True,
        kv_budget_bytes: float = 2e9,
        max_prompt_tokens: int | None = None,
        prefill_chunk: int = 2048,
        max_padding: float = 0.1,
        pass_tokens: int = 128,
        progress: bool = True,
    ):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.kv_budget_bytes = kv_budget_bytes
        self.prefill_chunk = prefill_chunk
        self.max_padding = max_padding  # a reuse batch's pad slots: at most this fraction of its suffix tokens
        self.pass_tokens = pass_tokens  # shared tokens worth a forward pass of their own (trie_walk)
        self.progress = progress
        self.device = next(model.parameters()).device
        limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.max_prompt_tokens = prompt_limit(max_prompt_tokens, limit)
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.kv_bytes_per_token = _kv_bytes_per_token(model)
        self.reusable = _reusable(model)
        self.forward_tokens = 0  # token slots run through the model, padding included

    # -- public -------------------------------------------------------------------------------
    @property
    def prompts_per_call(self) -> int:
        """One forward pass's rows: a prompt set of at least `batch_size` queries is a call of its own."""
        return self.batch_size

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        start = time.perf_counter()
        scores: list[float] = [0.0] * len(requests)
        prompt_tokens = computed = 0
        by_kind: dict[PromptKind, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_kind[r.kind].append(i)
        for kind, idx in by_kind.items():
            enc = self.encoder(kind)
            ids = [enc.encode(requests[i]) for i in idx]
            check_lengths(ids, [requests[i] for i in idx], self.max_prompt_tokens, f"max_prompt_tokens={self.max_prompt_tokens}")
            if self.prefix_reuse and self.reusable:
                logprobs, n_computed = self.log_probs_prefix_reuse(ids, enc)
            else:
                logprobs, n_computed = self.log_probs_padded(ids, enc)
            for j, i in enumerate(idx):
                scores[i] = float(logprobs[j, 0] - logprobs[j, 1])
            prompt_tokens += sum(map(len, ids))
            computed += n_computed
        self.record(len(requests), prompt_tokens, prompt_tokens - computed, time.perf_counter() - start)
        return scores

    # -- paths --------------------------------------------------------------------------------
    @torch.inference_mode()
    def log_probs_padded(self, ids: list[list[int]], enc: PromptEncoder) -> tuple[torch.Tensor, int]:
        """[n, 2] log-probs of (true, false) after each prompt; plain left-padded batches, no reuse."""
        out = torch.empty(len(ids), 2, dtype=torch.float64)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        bar = self._bar(len(ids))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
                mask[row, width - len(ids[i]) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self._forward(input_ids, mask, positions, cache=None)
            out[chunk] = self._candidates(logits, enc)
            bar.update(len(chunk))
        bar.close()
        return out, sum(map(len, ids))

    @torch.inference_mode()
    def log_probs_prefix_reuse(self, ids: list[list[int]], enc: PromptEncoder) -> tuple[torch.Tensor, int]:
        """[n, 2] log-probs as `log_probs_padded`, computing each distinct prefix once (see module doc)."""
        from transformers import DynamicCache

        out = torch.empty(len(ids), 2, dtype=torch.float64)
        first: dict[tuple, int] = {}
        same = [first.setdefault(tuple(p), i) for i, p in enumerate(ids)]  # duplicates are scored once
        order = [i for i in trie_order(ids) if same[i] == i]
        base, cached = DynamicCache(), []
        computed = 0
        bar = self._bar(len(order))
        for path, leaves in trie_walk(order, ids, self.pass_tokens):
            keep = common_prefix_length(cached, path)
            base.crop(keep - len(cached))
            computed += self._prefill(base, path[keep:], start=keep)
            cached = path
            for batch in self._batches(leaves, ids):
                rows, forks = [i for i, _ in batch], [f for _, f in batch]
                suffixes = [ids[i][f:] for i, f in batch]
                logits = self._run_suffixes(_fork(base, forks), suffixes, forks)
                out[rows] = self._candidates(logits, enc)
                computed += sum(map(len, suffixes))
                bar.update(len(rows))
        bar.close()
        return out[same], computed

    # -- pieces -------------------------------------------------------------------------------
    def _batches(self, leaves: list[tuple[int, int]], ids: list[list[int]]):
        """(prompt, fork) pairs in batches of similar suffix length, longest first (see module doc)."""
        batch: list[tuple[int, int]] = []
        for leaf in sorted(leaves, key=lambda leaf: leaf[1] - len(ids[leaf[0]])):
            if batch and not self._fits(batch + [leaf], ids):
                yield batch
                batch = []
            batch.append(leaf)
        if batch:
            yield batch

    def _fits(self, batch: list[tuple[int, int]], ids: list[list[int]]) -> bool:
        suffixes = [len(ids[i]) - f for i, f in batch]
        width = max(suffixes)
        slots = len(batch) * (max(f for _, f in batch) + width)
        return (
            len(batch) <= self.batch_size
            and slots * self.kv_bytes_per_token <= self.kv_budget_bytes
            and len(batch) * width <= (1 + self.max_padding) * sum(suffixes)
        )

    def _prefill(self, cache, tokens: Sequence[int], start: int) -> int:
        for a in range(0, len(tokens), self.prefill_chunk):
            piece = torch.tensor([list(tokens[a : a + self.prefill_chunk])], dtype=torch.long)
            mask = torch.ones((1, start + a + piece.shape[1]), dtype=torch.long)
            positions = torch.arange(start + a, start + a + piece.shape[1])[None]
            self._forward(piece, mask, positions, cache=cache)
        return len(tokens)

    def _run_suffixes(self, cache, suffixes: list[list[int]], forks: list[int]) -> torch.Tensor:
        # Row r of `cache` holds its fork's prefix right-aligned (see `_fork`); its suffix is
        # right-padded, so its real tokens fill contiguous slots: relative distances stay intact
        # (sliding-window layers count distance in cache slots).
        width, prefix, b = max(map(len, suffixes)), max(forks), len(suffixes)
        input_ids = torch.full((b, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((b, prefix + width), dtype=torch.long)
        for row, (s, f) in enumerate(zip(suffixes, forks, strict=True)):
            input_ids[row, : len(s)] = torch.tensor(s)
            mask[row, prefix - f : prefix + len(s)] = 1
        positions = torch.tensor(forks)[:, None] + torch.arange(width)
        last = torch.tensor([len(s) - 1 for s in suffixes])
        keep = torch.unique(last)  # sorted distinct last positions: logits for these columns only
        logits = self._forward(input_ids, mask, positions, cache=cache, keep=keep)
        return logits[torch.arange(b), torch.searchsorted(keep, last)]

    def _forward(self, input_ids, mask, positions, cache, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at the last position ([b, vocab]), or at the columns `keep` ([b, len(keep), vocab])."""
        kwargs = {self._cache_kwarg: cache, "use_cache": cache is not None}
        self.forward_tokens += input_ids.numel()
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            logits_to_keep=1 if keep is None else keep.to(self.device),
            **kwargs,
        )
        return out.logits[:, -1, :] if keep is None else out.logits

    def _candidates(self, logits: torch.Tensor, enc: PromptEncoder) -> torch.Tensor:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return logprobs[:, [enc.true_id, enc.false_id]].double().cpu()

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def _bar(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="scoring", unit="prompt", disable=not self.progress or total < 64, leave=False)


class Float32Head(torch.nn.Module):
    """An LM head computed in float32: a float32 copy of the projection's weight (and bias), applied
    to the final hidden state cast to float32, so logits are not rounded to the model's dtype (a
    bf16 logit near 16 moves in steps of 0.0625). What follows the head in the model's forward
    (e.g. logit soft-capping) and the log-softmax then run in float32 too."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.register_buffer("weight", head.weight.detach().float(), persistent=False)
        self.register_buffer("bias", None if head.bias is None else head.bias.detach().float(), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.float(), self.weight, self.bias)


def use_float32_head(model) -> bool:
    """Compute `model`'s LM head in float32 when its weights are in a lower precision (ModelSpec.head_dtype);
    True when the head was replaced. A float32 model is left as it is, so its scores do not change."""
    head = model.get_output_embeddings()
    if isinstance(head, Float32Head) or (isinstance(head, torch.nn.Linear) and head.weight.dtype == torch.float32):
        return False
    if not isinstance(head, torch.nn.Linear):
        warnings.warn(f"head_dtype float32: the LM head is a {type(head).__name__}, not a plain linear layer; "
                      "it stays in the model's dtype", stacklevel=2)
        return False
    model.set_output_embeddings(Float32Head(head))
    return True


def _fork(base, forks: list[int]):
    """A batch cache whose row r holds the base's first forks[r] tokens, right-aligned (zeros on the left, masked)."""
    from transformers import DynamicCache

    width = max(forks)

    def rows(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros((len(forks), *t.shape[1:-2], width, t.shape[-1]))
        for r, f in enumerate(forks):
            out[r, ..., width - f :, :] = t[0, ..., :f, :]
        return out

    return DynamicCache((rows(layer.keys), rows(layer.values)) for layer in base.layers)


def _reusable(model) -> bool:
    """Prefix reuse needs a full cache that can be cropped and sliced: full or sliding-window attention only
    (a full cache serves sliding layers exactly; their masks keep the window)."""
    kinds = getattr(model.config.get_text_config(), "layer_types", None) or []
    return set(kinds) <= {"full_attention", "sliding_attention"}


def _kv_bytes_per_token(model) -> int:
    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * heads * head_dim * itemsize


def load_hf_scorer(
    name: str,
    dtype: str = "auto",
    device: str = "auto",
    head_dtype: str = "float32",
    **kwargs,
) -> HFScorer:
    """Load tokenizer + causal LM from a resolved folder or hub id and wrap them in an HFScorer.
    head_dtype "float32": the LM head runs in float32 whatever `dtype` is (`use_float32_head`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_icm.scoring.models import resolve

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype(dtype, on_gpu=device.startswith("cuda"))
    path = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    if head_dtype == "float32":
        use_float32_head(model)
    return HFScorer(model, tokenizer, **kwargs)


def scorer_from_spec(spec, api_key: str | None = None) -> HFScorer:
    """The backend registry's factory (persona_icm/backends.py) for a ModelSpec with backend "hf"."""
    return load_hf_scorer(
        spec.name,
        dtype=spec.dtype,
        device=spec.device,
        head_dtype=spec.head_dtype,
        batch_size=spec.batch_size,
        prefix_reuse=spec.prefix_reuse,
        kv_budget_bytes=spec.kv_budget_gb * 1e9,
        max_prompt_tokens=spec.max_prompt_tokens,
    )
