"""The ICM search state: which claims carry which label, and the canonical context order.

Claims are addressed by their index in the list the search was given ("claim order").
A labelling is immutable; every change makes a new one, so a proposal that is rejected
simply leaves the old one in place.

Context order (docs/method.md "Objective"): groups in the order they first entered the labelled
pool; within a group, its labelled members in claim order. The claim being scored is removed
and becomes the query. A new group therefore lands at the end of every prompt, which keeps the
prompts of consecutive states sharing long prefixes. The option `context_order="claim"` (groups
in claim order, the earlier code's order) exists for benchmarks; a claim joining the pool then
changes every prompt from its position on.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from persona_icm.claims import Claim

UNLABELLED = -1


@dataclass(frozen=True)
class Pool:
    """The fixed set of claims to label, with its group structure (GOQA: groups of two; a group whose
    other claim fell outside the split, as the fork's split cuts one group, has one)."""

    claims: tuple[Claim, ...]
    group_of: tuple[int, ...]  # claim index -> group index
    members: tuple[tuple[int, ...], ...]  # group index -> its one or two claim indices, in claim order
    group_ids: tuple[str, ...]
    context_order: str = "entry"  # "claim": groups in claim order (the earlier code's order)

    @classmethod
    def from_claims(cls, claims: list[Claim] | tuple[Claim, ...], context_order: str = "entry") -> Pool:
        claims = tuple(claims)
        if not claims:
            raise ValueError("claims: the ICM search needs at least one group of two claims, got none")
        ids = [c.claim_id for c in claims]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"claims: claim_id must be unique; repeated: {dup}")
        by_group: dict[str, list[int]] = {}
        for index, claim in enumerate(claims):
            by_group.setdefault(claim.group_id, []).append(index)
        wrong = {g: len(m) for g, m in by_group.items() if len(m) > 2}
        if wrong:
            raise ValueError(
                f"claims: a group holds at most two claims (one True, one False by construction); "
                f"groups with more: {dict(list(wrong.items())[:5])}"
            )
        group_ids = tuple(by_group)
        group_index = {g: k for k, g in enumerate(group_ids)}
        members = tuple(tuple(m) for m in by_group.values())
        group_of = tuple(group_index[c.group_id] for c in claims)
        if context_order not in ("entry", "claim"):
            raise ValueError(f"icm.context_order must be 'entry' or 'claim', got {context_order!r}")
        return cls(claims, group_of, members, group_ids, context_order)

    def __len__(self) -> int:
        return len(self.claims)

    def sibling(self, index: int) -> int | None:
        """The other claim of the claim's group; None for a group of one."""
        others = [i for i in self.members[self.group_of[index]] if i != index]
        return others[0] if others else None


@dataclass(frozen=True)
class Labelling:
    """labels[i] in {-1 (unlabelled), 0, 1}; group_order: groups in the order they entered the pool."""

    labels: tuple[int, ...]
    group_order: tuple[int, ...]

    @classmethod
    def empty(cls, n_claims: int) -> Labelling:
        return cls((UNLABELLED,) * n_claims, ())

    def with_labels(self, pool: Pool, updates: list[tuple[int, int]]) -> Labelling:
        """A copy with (claim index, label) applied in the given order; new groups join the end."""
        labels = list(self.labels)
        order = list(self.group_order)
        for index, label in updates:
            if label not in (0, 1):
                raise ValueError(f"label for claim {pool.claims[index].claim_id!r} must be 0 or 1, got {label!r}")
            group = pool.group_of[index]
            if group not in order:
                order.append(group)
            labels[index] = label
        return Labelling(tuple(labels), tuple(order))

    def labelled(self) -> list[int]:
        return [i for i, y in enumerate(self.labels) if y != UNLABELLED]

    @property
    def size(self) -> int:
        return sum(1 for y in self.labels if y != UNLABELLED)

    def context(self, pool: Pool) -> tuple[tuple[int, int], ...]:
        """(claim index, label) of every labelled claim, in the canonical context order."""
        groups = self.group_order if pool.context_order == "entry" else sorted(self.group_order)
        return tuple((i, self.labels[i]) for g in groups for i in pool.members[g] if self.labels[i] != UNLABELLED)

    def key(self, pool: Pool) -> bytes:
        """Identifies the labelling and its context order exactly (memo key for U)."""
        return context_key(self.context(pool))

    def inconsistent_pairs(self, pool: Pool) -> list[tuple[int, int]]:
        """GOQA rule: a group of two with one True by construction is inconsistent iff both labels are equal."""
        pairs = []
        for g in self.group_order:
            if len(pool.members[g]) != 2:
                continue
            a, b = pool.members[g]
            if self.labels[a] != UNLABELLED and self.labels[a] == self.labels[b]:
                pairs.append((a, b))
        return pairs


def context_key(context: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> bytes:
    """Exact, compact encoding of an ordered context: one 32-bit code (2*index + label) per row."""
    return array("i", [2 * i + y for i, y in context]).tobytes()
