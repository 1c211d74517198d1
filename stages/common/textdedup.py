"""Dedup and decontamination as small pure functions over records (each testable alone).

normalize -> words -> record_features -> signatures (datasketch, sharded) -> LSH candidate pairs
-> `is_near_duplicate` on each pair -> `keep_first`. Every step but the last is per record or per
pair, which is what lets the Spark engine (spark_dedup.py) run the same functions. Decontamination
against the eval sets is its own module (decontamination.py).

The rule: a near-duplicate is a near-duplicate *record*, prompt and response both near-identical
by a symmetric similarity (`similarity`). Measured on task families the rule was not designed on
(data/bench/families.jsonl, data/README.md).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"\w+")
WORD_OR_SEPARATOR = re.compile(r"\w+|[,;]")
PROMPT_NGRAM = 3  # characters per shingle of the re-worded-prompt candidates: a typo keeps most of them


def normalize(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace folded to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def words(text: str) -> list[str]:
    return WORD.findall(normalize(text))


def shingles(tokens: Sequence[str], size: int) -> set[str]:
    """Word n-grams; a record shorter than `size` is one shingle of all its words (never empty
    unless the record has no words at all)."""
    if len(tokens) <= size:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def record_text(record: dict) -> str:
    """What dedup compares: prompt and response (or text) as one string, so that a copy split
    across the two fields is still a copy."""
    if "text" in record:
        return record["text"]
    return f"{record['prompt']} {record.get('response', record.get('answer', ''))}"


# ------------------------------------------------------------------------------ exact duplicates
def exact_duplicates(texts: Sequence[str]) -> dict[int, int]:
    """index -> index of its first occurrence, for every repeat of a normalized text."""
    first: dict[str, int] = {}
    out: dict[int, int] = {}
    for i, text in enumerate(texts):
        key = hashlib.sha256(normalize(text).encode()).hexdigest()
        if key in first:
            out[i] = first[key]
        else:
            first[key] = i
    return out


# ------------------------------------------------------------------------------ MinHash signatures
def _hash32(data: bytes) -> int:
    # CRC32 (C, ~10x cheaper than datasketch's default sha1): datasketch's affine32 scheme passes
    # every value through a murmur3 finalizer (fmix) before the permutations, so mixing is restored.
    return zlib.crc32(data)


def shard_signatures(shard: Sequence[set[str]], num_perm: int, seed: int = 1) -> np.ndarray:
    """MinHash signatures (len(shard), num_perm) of shingle sets: a pure function of the shard,
    so shards can go to any worker (processes here; Ray tasks or Spark partitions at scale)."""
    from datasketch import MinHash

    batches = ([s.encode() for s in sorted(shingle_set)] for shingle_set in shard)
    sigs = MinHash.bulk(batches, num_perm=num_perm, seed=seed, hashfunc=_hash32)
    return np.stack([m.hashvalues for m in sigs]) if sigs else np.zeros((0, num_perm), np.uint32)


def signatures(shingle_sets: Sequence[set[str]], num_perm: int, workers: int, shard_size: int) -> np.ndarray:
    shards = [shingle_sets[i : i + shard_size] for i in range(0, len(shingle_sets), shard_size)]
    if workers <= 1 or len(shards) <= 1:
        parts = [shard_signatures(s, num_perm) for s in shards]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(shard_signatures, shards, [num_perm] * len(shards)))
    return np.concatenate(parts) if parts else np.zeros((0, num_perm), np.uint32)


# ------------------------------------------------------------------------------ near duplicates
# A training example is its prompt *and* its response: two records are near-duplicates only when
# both are near-identical (`record_similarity`, symmetric). A pair whose answers differ teaches two
# things and is never removed, however alike its prompts; a long answer with one word changed is
# still the same record. One special case is kept because it paid on data the rule was not built
# on (README "Your own data"): a changed parameter (a number, a list item) makes another task even
# when the short answers agree ("Is 67 an odd number?" / "Is 71 an odd number?", both "Yes").


@dataclass(frozen=True)
class NearDuplicateRule:
    prompt: float      # least similarity of the prompts (a re-worded prompt may pass)
    response: float    # least similarity of the responses (what the example teaches: stricter)
    spelling: float    # two words at least this alike (characters) count as one: a typo
    parameters: bool   # the prompts' numbers and list items agree (`parameters_agree`)
    candidates: float  # LSH threshold of the candidate index (record_features' Jaccard)


def word_similarity(x: str, y: str) -> float:
    """Character similarity of two words, the same whichever comes first (difflib's ratio is not)."""
    a, b = sorted((x, y))
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def similarity(a: str, b: str, spelling: float) -> float:
    """How near-identical two texts are, symmetric, in [0, 1] (1.0 for two empty texts).

    Their word multisets are compared (order-free: a clause may move). A word left over on one
    side that is at least `spelling` alike to one left over on the other is the same word with a
    typo ("tehse"/"these" 0.8; "river"/"silver" 0.73; never a number: it is a value). The rest
    are edits: a word only one side has (a "please", a greeting) costs itself; a word *replaced*
    by another costs twice, because it changes what the text says ("Count the vowels in peach" /
    "... in river"). So the score is a Dice coefficient, 2 x shared / total, less 2 per replaced
    pair: one replaced word is 0.6 of a 5-word prompt, 0.95 of a 40-word answer."""
    wa, wb = Counter(words(a)), Counter(words(b))
    total = sum(wa.values()) + sum(wb.values())
    if not total:
        return 1.0
    common = wa & wb
    shared = sum(common.values())
    left_a, left_b = sorted((wa - common).elements()), sorted((wb - common).elements())
    typos = 0
    if left_a and left_b and len(left_a) * len(left_b) <= 400:  # a few leftovers: pair the most alike first
        pairs = sorted(((word_similarity(x, y), i, k) for i, x in enumerate(left_a) for k, y in enumerate(left_b)
                        if not any(c.isdigit() for c in x + y)), reverse=True)
        used_a, used_b = set(), set()
        for score, i, k in pairs:
            if score < spelling:
                break
            if i not in used_a and k not in used_b:
                used_a.add(i)
                used_b.add(k)
        typos = len(used_a)
    replaced = min(len(left_a), len(left_b)) - typos
    return max(0.0, 2 * (shared + typos - replaced) / total)


def fields(record: dict) -> tuple[str, str]:
    """(prompt, response) of an instruction record; a text record is all response."""
    if "text" in record:
        return "", record["text"]
    return record.get("prompt", ""), record.get("response", record.get("answer", ""))


def record_similarity(a: dict, b: dict, spelling: float) -> tuple[float, float]:
    (pa, ra), (pb, rb) = fields(a), fields(b)
    return similarity(pa, pb, spelling), similarity(ra, rb, spelling)


def parameters(text: str) -> tuple[Counter, Counter]:
    """A request's parameters, the values a task is about: (its list items, its other numbers).
    A list is three or more one-word items separated by commas or semicolons ("Sort 5, 11, 2",
    "longest: pear, window, kiwi"; not the comma after "In 3 sentences,")."""
    tokens = WORD_OR_SEPARATOR.findall(normalize(text))
    items: Counter = Counter()
    in_list: set[int] = set()
    k = 0
    while k < len(tokens):  # a run: word (sep word){2,}
        end = k
        while end + 2 < len(tokens) and tokens[end + 1] in ",;" and tokens[end + 2] not in ",;":
            end += 2
        if end - k >= 4 and tokens[k] not in ",;":
            items.update(tokens[k : end + 1 : 2])
            in_list.update(range(k, end + 1))
            k = end + 1
        else:
            k += 1
    numbers = Counter(t for k, t in enumerate(tokens) if t.isdigit() and k not in in_list)
    return items, numbers


def parameters_agree(a: dict, b: dict) -> bool:
    """The prompts ask about the same values: the same list items (one item more or less is
    another task even when the short answers agree: "largest of 27, 6, 20" / "largest of 27, 20,
    10, 16, 6", both "27"), and no number swapped for another ("Is 67 odd?" / "Is 71 odd?", both
    "Yes"). A number only one side has is allowed: a reference dropped from a re-submitted ticket."""
    (items_a, numbers_a), (items_b, numbers_b) = parameters(fields(a)[0]), parameters(fields(b)[0])
    return items_a == items_b and not (numbers_a - numbers_b and numbers_b - numbers_a)


def is_near_duplicate(a: dict, b: dict, rule: NearDuplicateRule) -> tuple[float, float] | None:
    """The pair's (prompt, response) similarities when it is a near-duplicate, else None. Pure:
    what every engine calls for every candidate pair."""
    if rule.parameters and not parameters_agree(a, b):
        return None
    prompt, response = record_similarity(a, b, rule.spelling)
    return (prompt, response) if prompt >= rule.prompt and response >= rule.response else None


SHORT_FIELD = 16  # words: a prompt or answer this short is hashed by its words' characters


def record_features(record: dict) -> set[str]:
    """What the candidate index hashes, per field (prompt, response). A short field: its words and
    each word's character 3-grams, so that a typo, a moved clause or a greeting keeps most of them.
    A long field: its word 3-grams, which templated records (a ticket form, a boilerplate opening)
    share far less than they share words, so that candidates stay few per record."""
    out = set()
    for part, text in zip("pr", fields(record), strict=True):
        tokens = words(text)
        if len(tokens) > SHORT_FIELD:
            out.update(f"{part}~{s}" for s in shingles(tokens, 3))
            continue
        for word in tokens:
            out.add(f"{part}:{word}")
            padded = f"^{word}$"
            out.update(f"{part}#{padded[i : i + 3]}" for i in range(len(padded) - 2))
    return out


def _exact_only(n: int, threshold: float) -> bool:
    """Whether a field of n words reaches `threshold` with another only when both have the same
    length and the same words holding a digit (see `block`). The bounds are computed as
    `similarity` computes a score, so float rounding agrees (0.8 / (2 x 0.2) is 2.0000000000000004)."""
    longer_by_one = 2 * n / (2 * n + 1)
    one_replaced = max(0.0, 2 * (n - 2) / (2 * n)) if n else 0.0
    return longer_by_one < threshold and one_replaced < threshold


def _field_block(text: str, threshold: float) -> tuple:
    tokens = words(text)
    if not _exact_only(len(tokens), threshold):
        return ("long",)
    return len(tokens), tuple(sorted(t for t in tokens if any(c.isdigit() for c in t)))


def block(record: dict, rule: NearDuplicateRule) -> tuple:
    """What two records must share to be near-duplicates under `rule`: the candidate index is
    split by it, so the pairs it never proposes are pairs the rule would refuse (exact, no recall
    lost), and templated short records ("Add 12 and 6." -> "18") stop meeting in one bucket, where
    candidate pairs grow with the square of the template's size.

    Why it is exact, for a field of n words against one of m (`similarity`): shared and typo words
    are at most min(n, m), so similarity <= 2 min(n, m) / (n + m) <= 2n / (2n + 1) when n != m;
    with n = m, a word holding a digit that the other side lacks is never a typo, so at least one
    word is replaced and similarity <= (n - 2) / n. Both fall below a threshold t while
    n < t / (2 (1 - t)) (`_exact_only`; 0.95: up to 9 words; 0.8: up to 1): such a field meets
    only a field of the same length with the same digit words. With `rule.parameters`, the prompts'
    list items are equal too. tests/test_dedup.py holds it on random edits and on every labelled set."""
    prompt, response = fields(record)
    items = tuple(sorted(parameters(prompt)[0].elements())) if rule.parameters else ()
    return _field_block(prompt, rule.prompt), _field_block(response, rule.response), items


def lsh_index(threshold: float, num_perm: int, lsh_weights: tuple[float, float], params: tuple | None = None):
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=num_perm, weights=tuple(lsh_weights), params=params)


def candidate_pairs(sigs: np.ndarray, threshold: float, lsh_weights: tuple[float, float],
                    skip: Iterable[int] = (), blocks: Sequence[Hashable] | None = None) -> list[tuple[int, int]]:
    """(i, j), j < i, sorted: every pair of records in the same block (`block`; one block if None)
    that share an LSH bucket (datasketch's bands x rows for the threshold and weights). Skipped
    records (already removed) take no part. One datasketch index per block of two records or more,
    built and dropped in turn, so memory is bounded by the largest block, not the corpus; the bands
    and rows are computed once (datasketch integrates for them)."""
    from datasketch import LeanMinHash

    skip = set(skip)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i in range(len(sigs)):
        if i not in skip:
            members[None if blocks is None else blocks[i]].append(i)
    template = lsh_index(threshold, sigs.shape[1], lsh_weights)
    pairs = []
    for ids in members.values():
        if len(ids) < 2:
            continue
        lsh = lsh_index(threshold, sigs.shape[1], lsh_weights, (template.b, template.r))
        for i in ids:
            sketch = LeanMinHash(seed=1, hashvalues=sigs[i], scheme="affine32")
            pairs += [(i, j) for j in lsh.query(sketch)]
            lsh.insert(i, sketch)
    return sorted(pairs)


def keep_first(n: int, confirmed: dict[tuple[int, int], tuple[float, float]],
               skip: Iterable[int] = ()) -> dict[int, tuple[int, tuple[float, float]]]:
    """index -> (the earliest kept record it duplicates, their similarities). In input order, a
    record is removed when a confirmed pair links it to an earlier record that was kept; so a chain
    a ~ b ~ c with a !~ c keeps a and c. The one sequential step: everything before it is per pair."""
    by_record: dict[int, list[int]] = defaultdict(list)
    for i, j in confirmed:
        by_record[i].append(j)
    removed: dict[int, tuple[int, tuple[float, float]]] = {}
    gone = set(skip)
    for i in range(n):
        if i in gone:
            continue
        kept = [j for j in sorted(by_record.get(i, ())) if j not in gone]
        if kept:
            removed[i] = (kept[0], confirmed[(i, kept[0])])
            gone.add(i)
    return removed


def confirmed_pairs(records: Sequence[dict], sigs: np.ndarray, rule: NearDuplicateRule,
                    lsh_weights: tuple[float, float], skip: Iterable[int] = ()) -> dict[tuple[int, int], tuple]:
    """(i, j) -> (prompt, response) similarity of every LSH candidate pair the rule confirms."""
    confirmed = {}
    blocks = [block(r, rule) for r in records]
    for i, j in candidate_pairs(sigs, rule.candidates, lsh_weights, skip, blocks):
        score = is_near_duplicate(records[i], records[j], rule)
        if score is not None:
            confirmed[(i, j)] = score
    return confirmed


def near_duplicates(records: Sequence[dict], sigs: np.ndarray, rule: NearDuplicateRule,
                    lsh_weights: tuple[float, float], skip: Iterable[int] = ()) -> dict[int, tuple[int, tuple]]:
    """index -> (earliest kept index it duplicates, (prompt, response) similarity), on one machine:
    LSH candidates (datasketch), each confirmed by `is_near_duplicate`, then `keep_first`. The
    Spark engine (stages/common/spark_dedup.py) makes the same three steps on a cluster."""
    return keep_first(len(records), confirmed_pairs(records, sigs, rule, lsh_weights, skip), skip)


# ------------------------------------------------------------------------------ scoring
def score_against_truth(removed: Sequence[dict], planted: Sequence[dict]) -> dict[str, dict]:
    """Recall and precision of each planted kind. A removal counts as correct only when its pair
    (the removed record and the record it matched) is labelled: both in one planted group (a
    copy, its original, and other copies of that original). An eval leak's match is an eval
    record; it is correct when the removed record is a planted leak of that record."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for p in planted:
        parent[root(p["id"])] = root(p["of"])
    leak_of = {p["id"]: p["of"] for p in planted if p["kind"] == "eval_leak"}
    out = {}
    for kind in sorted({p["kind"] for p in planted}):
        truth = {p["id"] for p in planted if p["kind"] == kind}
        found = [r for r in removed if r["reason"] == kind]
        if kind == "eval_leak":
            right = {r["id"] for r in found if leak_of.get(r["id"]) == r["matched"]}
        else:
            right = {r["id"] for r in found if r["id"] in parent and root(r["id"]) == root(r["matched"])}
        out[kind] = {"planted": len(truth), "removed": len(found), "true_positives": len(right & truth),
                     "recall": round(len(right & truth) / len(truth), 4) if truth else 1.0,
                     "precision": round(len(right) / len(found), 4) if found else 1.0}
    return out


def score_families(removed: Sequence[dict], truth: Sequence[dict]) -> dict[str, dict]:
    """Per split (tune / heldout) and per family: near-duplicate recall (labelled copies removed,
    matched to their own group) and precision (of the removals of that family's records, the share
    that are labelled copies matched to their own group; a removed `distinct` or original record is
    a false positive)."""
    label = {t["id"]: t for t in truth}
    out: dict[str, dict] = {}
    for split in sorted({t["split"] for t in truth}, key=lambda s: s != "tune"):
        families: dict[str, dict] = {}
        totals = Counter()
        for family in dict.fromkeys(t["family"] for t in truth if t["split"] == split):
            planted = {t["id"] for t in truth if t["family"] == family and t["kind"] == "near_duplicate"}
            found = [r for r in removed if r["reason"] == "near_duplicate" and label[r["id"]]["family"] == family]
            right = [r for r in found if r["id"] in planted and label[r["matched"]]["of"] == label[r["id"]]["of"]]
            counts = Counter(planted=len(planted), removed=len(found), right=len(right))
            totals.update(counts)
            families[family] = score(counts)
        out[split] = {"near_duplicate": score(totals), "families": families}
    return out


def score(counts: Counter) -> dict:
    return {"planted": counts["planted"], "removed": counts["removed"], "true_positives": counts["right"],
            "recall": round(counts["right"] / counts["planted"], 4) if counts["planted"] else 1.0,
            "precision": round(counts["right"] / counts["removed"], 4) if counts["removed"] else 1.0}
