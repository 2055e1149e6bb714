"""transformers backend: exact next-token log-odds, batched, with shared-prefix KV reuse.

Two paths give the same numbers (tests check 1e-5 against one-prompt-at-a-time log_softmax):

- `prefix_reuse=False`: left-padded batches, `position_ids = cumsum(mask) - 1`, `logits_to_keep=1`.
- `prefix_reuse=True`: prompts are visited in depth-first order of their prefix trie (built over
  the encoder's pieces, smaller subtrees first, so leave-one-out prompts come out in index
  order). Consecutive prompts form a batch; the batch's longest common token prefix is
  brought into one base KV cache (extending, or cropping back, what the previous batch left
  there) and each suffix is run once on a copy of that cache. Suffixes are right-padded
  (positions continue from the prefix) and `logits_to_keep` selects only the rows' last real
  columns. (Left padding would put a hole between prefix and suffix, which sliding-window layers
  get wrong: they measure the window in cache slots, not positions.)
  Memory: a batch of b suffixes holds b copies of the prefix KV. b is the largest number
  <= batch_size that fits `kv_budget_bytes`; with b == 1 there is no copy at all: the suffix
  runs on the base cache and the next prompt crops it back to their common prefix (the
  cheapest walk on CPU, and what long prefixes on large-KV models fall back to).
  Sliding-window layers get a full (croppable) cache; their masks keep the window. Models whose
  cache cannot be cropped (linear-attention layers) always copy, and rebuild the base when the
  next prefix does not extend it.

Numbers depend only on the prompt, up to float reassociation between batch shapes (~1e-6).
"""

from __future__ import annotations

import copy
import inspect
import time
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


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def trie_order(keys: list[tuple]) -> list[int]:
    """Indices of `keys` in depth-first order of their prefix trie, smaller subtrees first (ties: input order)."""
    out: list[int] = []
    stack: list[tuple[list[int], int]] = [(list(range(len(keys))), 0)]
    while stack:
        idx, depth = stack.pop()
        while True:
            done = [i for i in idx if len(keys[i]) == depth]
            rest = [i for i in idx if len(keys[i]) > depth]
            out.extend(done)
            groups: dict = defaultdict(list)
            for i in rest:
                groups[keys[i][depth]].append(i)
            if len(groups) == 1 and not done:
                idx, depth = rest, depth + 1  # a chain: no branching here
                continue
            children = sorted(groups.values(), key=lambda g: (len(g), g[0]))
            stack.extend((g, depth + 1) for g in reversed(children))
            break
    return out


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
        progress: bool = True,
    ):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.kv_budget_bytes = kv_budget_bytes
        self.prefill_chunk = prefill_chunk
        self.progress = progress
        self.device = next(model.parameters()).device
        limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.max_prompt_tokens = prompt_limit(max_prompt_tokens, limit)
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.kv_bytes_per_token = _kv_bytes_per_token(model)

    # -- public -------------------------------------------------------------------------------
    def score(self, requests: list[ScoreRequest]) -> list[float]:
        start = time.perf_counter()
        scores: list[float] = [0.0] * len(requests)
        prompt_tokens = computed = 0
        by_kind: dict[PromptKind, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_kind[r.kind].append(i)
        for kind, idx in by_kind.items():
            enc = self.encoder(kind)
            pieces = [enc.pieces(requests[i]) for i in idx]
            ids = [[t for p in ps for t in p] for ps in pieces]
            check_lengths(ids, [requests[i] for i in idx], self.max_prompt_tokens, f"max_prompt_tokens={self.max_prompt_tokens}")
            if self.prefix_reuse:
                logprobs, n_computed = self.log_probs_prefix_reuse(ids, [tuple(ps) for ps in pieces], enc)
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
    def log_probs_prefix_reuse(
        self, ids: list[list[int]], keys: list[tuple], enc: PromptEncoder
    ) -> tuple[torch.Tensor, int]:
        """[n, 2] log-probs as `log_probs_padded`, computing each shared prefix once (see module doc)."""
        out = torch.empty(len(ids), 2, dtype=torch.float64)
        order = trie_order(keys)
        base, base_tokens = self._new_cache(), []
        can_crop = _croppable(base)
        computed = 0
        bar = self._bar(len(ids))
        pos = 0
        while pos < len(order):
            chunk, prefix_len = self._next_batch(order, pos, ids)
            pos += len(chunk)
            prefix = ids[chunk[0]][:prefix_len]
            keep = common_prefix_length(base_tokens, prefix)
            if keep < len(base_tokens):
                if can_crop:
                    base.crop(keep - len(base_tokens))
                else:
                    base, keep = self._new_cache(), 0
            computed += self._prefill(base, prefix[keep:], start=keep)
            base_tokens = list(prefix)
            suffixes = [ids[i][prefix_len:] for i in chunk]
            if len(chunk) == 1 and can_crop:
                logits = self._run_suffixes(base, suffixes, prefix_len)
                base_tokens = list(ids[chunk[0]])  # the whole prompt stays cached for the next one
            else:
                cache = copy.deepcopy(base)
                cache.batch_repeat_interleave(len(chunk))
                logits = self._run_suffixes(cache, suffixes, prefix_len)
                del cache
            computed += sum(map(len, suffixes))
            out[chunk] = self._candidates(logits, enc)
            bar.update(len(chunk))
        bar.close()
        return out, computed

    # -- pieces -------------------------------------------------------------------------------
    def _next_batch(self, order: list[int], pos: int, ids: list[list[int]]) -> tuple[list[int], int]:
        """The next prompts in trie order sharing one base prefix, sized to the KV budget."""
        size = _sharing_run(order, pos, ids, self.batch_size)
        while True:
            chunk = order[pos : pos + size]
            seqs = [ids[i] for i in chunk]
            prefix_len = min(min(map(len, seqs)) - 1, _common_prefix_all(seqs))  # >= 1 token left to run
            longest = max(map(len, seqs))
            if size == 1 or size * longest * self.kv_bytes_per_token <= self.kv_budget_bytes:
                return chunk, prefix_len
            size = max(1, min(size - 1, int(self.kv_budget_bytes // (longest * self.kv_bytes_per_token))))

    def _prefill(self, cache, tokens: Sequence[int], start: int) -> int:
        for a in range(0, len(tokens), self.prefill_chunk):
            piece = torch.tensor([list(tokens[a : a + self.prefill_chunk])], dtype=torch.long)
            mask = torch.ones((1, start + a + piece.shape[1]), dtype=torch.long)
            positions = torch.arange(start + a, start + a + piece.shape[1])[None]
            self._forward(piece, mask, positions, cache=cache)
        return len(tokens)

    def _run_suffixes(self, cache, suffixes: list[list[int]], prefix_len: int) -> torch.Tensor:
        # Right padding: pads come after each row's real tokens, so no real token ever sees a pad
        # and relative distances stay intact (sliding-window layers count distance in cache slots).
        width = max(map(len, suffixes))
        b = len(suffixes)
        input_ids = torch.full((b, width), self._pad_id, dtype=torch.long)
        mask = torch.ones((b, prefix_len + width), dtype=torch.long)
        for row, s in enumerate(suffixes):
            input_ids[row, : len(s)] = torch.tensor(s)
            mask[row, prefix_len + len(s) :] = 0
        positions = (prefix_len + torch.arange(width))[None].expand(b, width)
        last = torch.tensor([len(s) - 1 for s in suffixes])
        keep = torch.unique(last)  # sorted distinct last positions: logits for these columns only
        logits = self._forward(input_ids, mask, positions, cache=cache, keep=keep)
        return logits[torch.arange(b), torch.searchsorted(keep, last)]

    def _forward(self, input_ids, mask, positions, cache, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at the last position ([b, vocab]), or at the columns `keep` ([b, len(keep), vocab])."""
        kwargs = {self._cache_kwarg: cache, "use_cache": cache is not None}
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

    def _new_cache(self):
        from transformers import DynamicCache

        # Sliding-window layers get a full cache too: the model's own masks still limit attention
        # to the window (same numbers), and a full cache can be cropped, so the walk down the
        # prefix trie reuses prefixes instead of rebuilding them. Other layer kinds (linear
        # attention) keep the config's cache.
        kinds = getattr(self.model.config.get_text_config(), "layer_types", None) or []
        if set(kinds) <= {"full_attention", "sliding_attention"}:
            return DynamicCache()
        return DynamicCache(config=self.model.config)

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def _bar(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="scoring", unit="prompt", disable=not self.progress or total < 64, leave=False)


def _sharing_run(order: list[int], pos: int, ids: list[list[int]], most: int) -> int:
    """How many prompts from `pos` on (at most `most`) to batch on one shared prefix.

    A batch of k prompts with common prefix p costs p + sum(len - p) tokens. Taking the next
    prompt narrows p to p'; it pays off against running that prompt on its own (len tokens, as a
    cache that cannot be cropped must) when (k - 1) * (p - p') < p'. Leave-one-out prompts of
    neighbouring labellings share all but their last rows, so this keeps them together and stops
    a batch from collapsing to the header they all share."""
    first = ids[order[pos]]
    k, shared = 1, len(first) - 1
    while k < most and pos + k < len(order):
        following = ids[order[pos + k]]
        narrowed = min(shared, common_prefix_length(first[:shared], following), len(following) - 1)
        if (k - 1) * (shared - narrowed) >= narrowed:
            break
        k, shared = k + 1, narrowed
    return k


def _common_prefix_all(seqs: list[list[int]]) -> int:
    n = len(seqs[0])
    for s in seqs[1:]:
        n = common_prefix_length(seqs[0][:n], s)
    return n


def _croppable(cache) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers == []:  # layers made on first use, all of one class
        return getattr(cache, "layer_class_to_replicate", None) is DynamicLayer
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


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
    **kwargs,
) -> HFScorer:
    """Load tokenizer + causal LM from a resolved folder or hub id and wrap them in an HFScorer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_icm.scoring.models import resolve

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype(dtype, on_gpu=device.startswith("cuda"))
    path = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    return HFScorer(model, tokenizer, **kwargs)
