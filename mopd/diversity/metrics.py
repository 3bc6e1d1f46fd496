"""Solution-diversity metrics of one group of responses to one prompt (pure functions).

Every function takes the responses of *one* prompt (a list of strings) and returns a float, or ``None``
where the metric is undefined for that group (too few responses, nothing to count). Definitions
(docs/diversity.md has the full text):

- ``tokenize``: identifiers | digit runs | single non-space symbols (the release's tokenisation).
- ``code_view``: the body of the last fenced block (```...```), else the whole text.
- ``self_bleu4``: mean over responses of sentence BLEU-4 of the response (hypothesis) against all the
  other responses of the group (references), computed by ``nltk.translate.bleu_score.sentence_bleu``
  with uniform weights (1/4 each), the standard brevity penalty against the closest reference length,
  and ``SmoothingFunction().method2`` (Lin & Och 2004: add one to the numerator and denominator of the
  2-, 3- and 4-gram precisions) and ``auto_reweigh=True`` (a hypothesis of L < 4 tokens weights its
  1..L-gram precisions 1/L each). Responses without a token are skipped as hypotheses. Higher = more
  alike (less diverse); identical responses score 1.
- ``pairwise_text_distance``: mean over unordered pairs of ``1 - difflib.SequenceMatcher(a, b).ratio()``.
- ``distinct_n``: unique n-grams / total n-grams, pooled over the group (n-grams never cross responses).
- ``unique_ratio``: distinct strings / responses.
- ``normalize_code``: comments dropped (Python tokenizer when it lexes, else ``#``, ``//``, ``/* */``
  stripped by pattern), then the tokens joined by single spaces (whitespace and layout ignored).
- ``ast_node_jaccard_distance``: mean over pairs of parsable responses of ``1 - sum(min)/sum(max)`` of
  their ``ast`` node-type counts (a weighted Jaccard distance); unparsable responses are skipped and
  counted.
- ``pass_at_k``: the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021), defined for
  ``1 <= k <= n``.
"""

from __future__ import annotations

import ast
import difflib
import io
import itertools
import math
import re
import tokenize as _pytokenize
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = [
    "TOKEN_RE",
    "tokenize",
    "code_view",
    "normalize_code",
    "ngrams",
    "distinct_n",
    "unique_ratio",
    "bleu4",
    "self_bleu4",
    "pairwise_text_distance",
    "ast_node_counts",
    "weighted_jaccard_distance",
    "ast_node_jaccard_distance",
    "pass_at_k",
    "mean_or_none",
]

# identifiers (letters/underscore then word characters) | runs of digits | any single non-space symbol
TOKEN_RE = re.compile(r"[^\W\d]\w*|\d+|[^\w\s]")
_FENCE_RE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_UNCLOSED_FENCE_RE = re.compile(r"```[^\n`]*\n(.*)\Z", re.DOTALL)


def tokenize(text: str) -> list[str]:
    """Split ``text`` into identifiers, digit runs and single symbols (whitespace dropped)."""
    return TOKEN_RE.findall(text or "")


def code_view(text: str) -> str:
    """The body of the last closed fenced block; an unclosed final fence counts; no fence -> the text."""
    text = text or ""
    blocks = _FENCE_RE.findall(text)
    if blocks:
        # An unclosed fence after the last closed one is the model's last code (truncated generation).
        tail = text[text.rfind("```") + 3 :] if text.count("```") % 2 == 1 else ""
        if tail and "\n" in tail:
            return tail.split("\n", 1)[1]
        return blocks[-1]
    m = _UNCLOSED_FENCE_RE.search(text)
    if m:
        return m.group(1)
    return text


def normalize_code(text: str) -> str:
    """Comment- and whitespace-insensitive form of a code string (used by ``unique_code_ratio``).

    Python that parses: its tokens without comments, joined by single spaces (string literals kept
    verbatim). Anything else: ``/* */``, ``//`` and ``#`` comments removed by pattern, then ``tokenize``.
    """
    text = text or ""
    if ast_node_counts(text) is not None:
        try:
            skip = (
                _pytokenize.COMMENT,
                _pytokenize.NL,
                _pytokenize.NEWLINE,
                _pytokenize.INDENT,
                _pytokenize.DEDENT,
                _pytokenize.ENDMARKER,
            )
            return " ".join(
                t.string for t in _pytokenize.generate_tokens(io.StringIO(text).readline) if t.type not in skip
            )
        except (_pytokenize.TokenError, SyntaxError):  # pragma: no cover - it parsed
            pass
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    text = re.sub(r"(?m)(#|//).*$", " ", text)
    return " ".join(tokenize(text))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique / total n-grams pooled over ``texts``; ``None`` when there is no n-gram at all."""
    pooled: list[tuple[str, ...]] = []
    for text in texts:
        pooled.extend(ngrams(tokenize(text), n))
    if not pooled:
        return None
    return len(set(pooled)) / len(pooled)


def unique_ratio(items: Sequence[str]) -> float | None:
    """Distinct items / items; ``None`` for an empty group."""
    if not items:
        return None
    return len(set(items)) / len(items)


def _nltk_bleu():
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("self-BLEU needs nltk: pip install nltk") from exc
    return sentence_bleu, SmoothingFunction().method2


def bleu4(hypothesis: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Sentence BLEU-4 of a token list against reference token lists (nltk, smoothing method2).

    ``auto_reweigh=True``: a hypothesis of L < 4 tokens uses weights 1/L on the 1..L-gram precisions
    (without it, a short response would be scored on 4-grams it cannot have, and two identical short
    responses would not score 1).
    """
    sentence_bleu, smoothing = _nltk_bleu()
    if not references:
        raise ValueError("bleu4 needs at least one reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            sentence_bleu(
                [list(r) for r in references],
                list(hypothesis),
                weights=(0.25, 0.25, 0.25, 0.25),
                smoothing_function=smoothing,
                auto_reweigh=True,
            )
        )


def self_bleu4(texts: Sequence[str]) -> float | None:
    """Mean BLEU-4 of each text against all the others (texts without tokens are not hypotheses, but stay
    references); ``None`` for fewer than two texts or when no text has a token."""
    if len(texts) < 2:
        return None
    toks = [tokenize(t) for t in texts]
    # An empty hypothesis has no BLEU (nltk would say 0): it is skipped, not counted as "unlike the rest".
    scores = [bleu4(toks[i], toks[:i] + toks[i + 1 :]) for i in range(len(toks)) if toks[i]]
    return sum(scores) / len(scores) if scores else None


def pairwise_text_distance(texts: Sequence[str]) -> float | None:
    """Mean over unordered pairs (i < j) of ``1 - SequenceMatcher(None, t_i, t_j).ratio()``."""
    if len(texts) < 2:
        return None
    dists = [1.0 - difflib.SequenceMatcher(None, a, b).ratio() for a, b in itertools.combinations(texts, 2)]
    return sum(dists) / len(dists)


def ast_node_counts(code: str) -> Counter | None:
    """Counts of ``ast`` node type names of ``code``; ``None`` when it does not parse as Python."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning on odd escapes etc.
            tree = ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    return Counter(type(node).__name__ for node in ast.walk(tree))


def weighted_jaccard_distance(a: Counter, b: Counter) -> float:
    """``1 - sum_t min(a_t, b_t) / sum_t max(a_t, b_t)`` (0 for two empty multisets)."""
    keys = set(a) | set(b)
    den = sum(max(a[k], b[k]) for k in keys)
    if den == 0:
        return 0.0
    return 1.0 - sum(min(a[k], b[k]) for k in keys) / den


def ast_node_jaccard_distance(codes: Sequence[str]) -> tuple[float | None, int, int]:
    """(mean pairwise AST node-type Jaccard distance over parsable codes, #parsable, #unparsable).

    The distance is ``None`` when fewer than two codes parse.
    """
    counts = [ast_node_counts(c) for c in codes]
    ok = [c for c in counts if c is not None]
    failed = len(counts) - len(ok)
    if len(ok) < 2:
        return None, len(ok), failed
    dists = [weighted_jaccard_distance(a, b) for a, b in itertools.combinations(ok, 2)]
    return sum(dists) / len(dists), len(ok), failed


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k)/C(n, k)``.

    ``None`` when ``k > n`` (not estimable) or ``n == 0``.
    """
    if not (0 <= c <= n):
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n == 0 or k > n:
        return None
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
