"""Walker's alias method in integers: an O(1) weighted choice the kernel can make.

For n weights the table has n entries (prob, alias). The kernel picks i uniformly, then
keeps i when a random u32 < prob[i], else takes alias[i]. Each entry's share is then
exactly weight / total, up to 2^-32 rounding.
"""

from __future__ import annotations

from fractions import Fraction

ONE = 1 << 32


def alias_table(weights: list[int]) -> list[tuple[int, int]]:
    """[(prob as u32 threshold, alias index)] for positive integer weights."""
    n = len(weights)
    if n == 0 or any(w <= 0 for w in weights):
        raise ValueError("alias_table needs at least one weight, all positive")
    total = sum(weights)
    scaled = [Fraction(w * n, total) for w in weights]  # exact: mean 1
    prob = [Fraction(1)] * n
    alias = list(range(n))
    small = [i for i, p in enumerate(scaled) if p < 1]
    large = [i for i, p in enumerate(scaled) if p >= 1]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1 - scaled[s]
        (small if scaled[g] < 1 else large).append(g)
    return [(min(ONE - 1, int(p * ONE)) if p < 1 else ONE - 1, a) for p, a in zip(prob, alias)]


def shares(table: list[tuple[int, int]]) -> list[float]:
    """The probability of each index under the table (what the kernel will do)."""
    n = len(table)
    out = [0.0] * n
    for i, (prob, alias) in enumerate(table):
        keep = (prob + (1 if prob == ONE - 1 else 0)) / ONE
        out[i] += keep / n
        out[alias] += (1 - keep) / n
    return out
