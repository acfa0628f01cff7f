"""What one replica of a unit looks like to its agent: the unit's pairs plus its own hidden checks,
shuffled, under opaque ids that differ per lease.

Per-lease ids and per-replica gold are what make copying detectable: a copier holding another
replica's answers cannot place them on its own ids, and its hidden checks are not in the other
replica at all. Ids are a keyed hash (BLAKE2b MAC) of (lease, item) under the server secret, so
nothing is stored per item and any server worker can map them back.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ViewItem:
    public_id: str
    item_id: int
    position: int  # index in the stored score vector: unit items first (id order), then gold items
    is_gold: bool


def public_id(secret: bytes, lease_id: int, item_id: int) -> str:
    # Keyed BLAKE2b is a MAC in one call (HMAC construction not needed), and several times faster.
    return hashlib.blake2b(f"{lease_id}:{item_id}".encode(), key=secret[:64], digest_size=10).hexdigest()


def replica_view(
    secret: bytes, lease_id: int, seed: int, unit_items: Sequence[int], gold_items: Sequence[int]
) -> list[ViewItem]:
    """The replica's items in the order the agent sees them."""
    n = len(unit_items)
    view = [ViewItem(public_id(secret, lease_id, i), i, k, False) for k, i in enumerate(unit_items)]
    view += [ViewItem(public_id(secret, lease_id, g), g, n + k, True) for k, g in enumerate(gold_items)]
    random.Random(seed).shuffle(view)
    return view
