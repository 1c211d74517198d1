"""Dedup and decontamination as small pure functions over records (each testable alone).

normalize -> words -> shingles -> signatures (datasketch, sharded) -> LSH candidates -> exact
Jaccard check and the same-task checks -> keep the first of each group. Decontamination against
the eval sets is its own module (decontamination.py).

Word-shingle Jaccard alone misleads on short records: "Convert 3 km to miles" and "Convert 30 km
to miles" share half their shingles and are different tasks. So a near-duplicate must also be
the same task (`same_task`): its answers agree, and no number was swapped for another. And the
reverse: a one-word edit of a four-word prompt ("Is 40 a prime number?" / "Is 40 prime number?",
a typo, a "please") leaves word-shingle Jaccard far below any safe threshold, so a re-worded prompt
is a second way in (`reworded`): an alignment of the two prompts' words whose edits touch no
parameter. Measured on data/bench/short_instructions.jsonl (data/README.md, "Dedup on short
records").
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
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
def answers_agree(a: dict, b: dict) -> bool:
    """Every word of the shorter answer is in the longer one ("24" and "The answer is 24." agree;
    "1.86 miles" and "18.64 miles" do not). Records without a response agree."""
    x, y = set(words(a.get("response", ""))), set(words(b.get("response", "")))
    return x <= y if len(x) <= len(y) else y <= x


def numbers_agree(a: dict, b: dict) -> bool:
    """No number of one record was swapped for another number: numbers only one side has are fine
    (a dropped or added figure), but each side holding one the other lacks is a changed
    parameter, and in a short instruction a changed parameter is another task ("Add 14 and 12" /
    "Add 14 and 21")."""
    na, nb = (Counter(w for w in words(record_text(r)) if w.isdigit()) for r in (a, b))
    return not (na - nb and nb - na)


def same_task(a: dict, b: dict, check_answers: bool, check_numbers: bool) -> bool:
    return (not check_answers or answers_agree(a, b)) and (not check_numbers or numbers_agree(a, b))


def prompt_words(text: str) -> list[tuple[str, bool]]:
    """A prompt's words, each with whether it is a parameter of the request: a number, or an item
    of a comma- or semicolon-separated list (the things that make another task when changed)."""
    tokens = WORD_OR_SEPARATOR.findall(normalize(text))
    return [(t, t.isdigit() or (k > 0 and tokens[k - 1] in ",;") or (k + 1 < len(tokens) and tokens[k + 1] in ",;"))
            for k, t in enumerate(tokens) if t not in ",;"]


def prompt_ngrams(text: str) -> set[str]:
    joined = " ".join(words(text))
    return {joined[i : i + PROMPT_NGRAM] for i in range(max(1, len(joined) - PROMPT_NGRAM + 1))}


def reworded(a: str, b: str, spelling: float, max_changed: float) -> bool:
    """The same request re-worded: aligned word by word (difflib), the two prompts differ by edits
    that touch no parameter (`prompt_words`), whose substitutions are spelling variants (character
    similarity >= `spelling`: "tehse"/"these" 0.8, "river"/"silver" 0.73), and that change at most
    `max_changed` of the longer prompt's words (a greeting or a "please" added, a word dropped)."""
    wa, wb = prompt_words(a), prompt_words(b)
    changed = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, [w for w, _ in wa], [w for w, _ in wb],
                                                      autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if any(param for _, param in (*wa[i1:i2], *wb[j1:j2])):
            return False
        if op == "replace" and (i2 - i1 != j2 - j1 or any(
                difflib.SequenceMatcher(None, x, y).ratio() < spelling
                for (x, _), (y, _) in zip(wa[i1:i2], wb[j1:j2], strict=True))):
            return False
        changed += max(i2 - i1, j2 - j1)
    return changed <= max_changed * max(len(wa), len(wb))


@dataclass(frozen=True)
class RewordRule:
    candidates: float   # LSH threshold on the prompts' character n-grams that proposes pairs
    spelling: float     # `reworded`'s similarity for a substituted word
    max_changed: float  # `reworded`'s share of the longer prompt's words that may change
    max_words: int      # only prompts this short: longer ones share enough shingles for Jaccard


def near_duplicates(records: Sequence[dict], shingle_sets: Sequence[set[str]], sigs: np.ndarray, threshold: float,
                    lsh_weights: tuple[float, float], check_answers: bool = True, check_numbers: bool = True,
                    skip: Iterable[int] = (), reword: RewordRule | None = None,
                    prompt_sigs: np.ndarray | None = None) -> dict[int, tuple[int, float]]:
    """index -> (earliest kept index it duplicates, exact Jaccard of their shingles).

    A pair is a near-duplicate when it is the same task (`same_task`) and either its shingle
    Jaccard reaches `threshold`, or its prompts are equal after normalization (the same question
    with its answer re-worded, "24" / "The answer is 24.", which short records cannot reach by
    Jaccard), or (with `reword` and `prompt_sigs`, MinHash of `prompt_ngrams`) one prompt is the
    other `reworded`. LSH (datasketch, bands x rows chosen for the thresholds and the weights)
    proposes the candidates; each is confirmed exactly, so precision does not rest on the MinHash
    estimate. Records are visited in input order and the first of a group is kept.
    """
    from datasketch import LeanMinHash, MinHashLSH

    skip = set(skip)
    lsh = MinHashLSH(threshold=threshold, num_perm=sigs.shape[1], weights=tuple(lsh_weights))
    use_prompts = reword is not None and prompt_sigs is not None
    prompt_lsh = MinHashLSH(threshold=reword.candidates, num_perm=prompt_sigs.shape[1],
                            weights=tuple(lsh_weights)) if use_prompts else None
    by_prompt: dict[str, list[int]] = defaultdict(list)
    out: dict[int, tuple[int, float]] = {}
    for i, shingle_set in enumerate(shingle_sets):
        if i in skip:
            continue
        sketch = LeanMinHash(seed=1, hashvalues=sigs[i], scheme="affine32")
        prompt = normalize(records[i]["prompt"]) if "prompt" in records[i] else None
        same_prompt = set(by_prompt.get(prompt, ())) if prompt is not None else set()
        short = prompt is not None and use_prompts and len(prompt.split()) <= reword.max_words
        prompt_sketch = LeanMinHash(seed=1, hashvalues=prompt_sigs[i], scheme="affine32") if short else None
        near_prompt = set(prompt_lsh.query(prompt_sketch)) if prompt_sketch is not None else set()
        matches = sorted((j, jaccard(shingle_set, shingle_sets[j])) for j in {*lsh.query(sketch), *same_prompt,
                                                                             *near_prompt})
        matches = [(j, score) for j, score in matches  # the cheap checks first
                   if same_task(records[i], records[j], check_answers, check_numbers)
                   and (score >= threshold or j in same_prompt
                        or (j in near_prompt and reworded(records[i]["prompt"], records[j]["prompt"],
                                                          reword.spelling, reword.max_changed)))]
        if matches:
            out[i] = matches[0]
        else:
            lsh.insert(i, sketch)
            if prompt is not None:
                by_prompt[prompt].append(i)
            if prompt_sketch is not None:
                prompt_lsh.insert(i, prompt_sketch)
    return out


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
