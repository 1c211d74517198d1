"""Writes data/bench/families.jsonl and its labels: a near-duplicate benchmark made of task
families with different surface habits, split into the families the rule was designed on
(`tune`) and families it was scored on only after it was frozen (`heldout`).

    python data/make_dedup_families.py

Every family is a list of groups. A group is an original record, its near-duplicates (the same
record re-submitted: both prompt and response near-identical), and its near-misses (another task
that looks alike: a dropped list item, a swapped entity or number; a different answer, or the same
short answer to another question). Labels: `near_duplicate` of the original, or `distinct`.

tune (the rule's design set):
- typo:          a typo in a prompt word; same answer                               -> near
- filler:        "please", a greeting, "could you"; same answer                     -> near
- comma_list:    items of a comma-separated list dropped or changed                  -> distinct
- number_swap:   a number changed ("Add 14 and 12" / "Add 14 and 21"; yes/no alike)  -> distinct
- entity_swap:   one entity swapped, a different answer ("capital of Peru" / "Chile") -> distinct
- repunctuated:  the answer's punctuation or case changed                            -> near
heldout (written with the tune families, never looked at while the rule was tuned):
- space_list:      space-separated items dropped ("Nile Amazon Danube Volga")         -> distinct
- long_answer:     the same prompt, a 40-80 word answer with one word changed         -> near
- long_answer_new: the same prompt, a 40-80 word answer with one sentence of new content -> distinct
- word_order:      the prompt's clauses reordered, same answer                        -> near
- paraphrase:      the prompt said in other words, the same answer: the same task, but not the same
                   record; a surface rule keeps it (data/README.md)                    -> distinct
- same_answer:     another question with the same short answer ("Yes", a number)      -> distinct
- noisy_copy:      spacing, case, punctuation and one typo at once, same answer       -> near
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "bench"
SEED = 20261206
GROUPS = 30  # per family

COUNTRIES = {"Peru": "Lima", "Chile": "Santiago", "Kenya": "Nairobi", "Norway": "Oslo", "Egypt": "Cairo",
             "Spain": "Madrid", "Ghana": "Accra", "Nepal": "Kathmandu", "Italy": "Rome", "Cuba": "Havana",
             "Iran": "Tehran", "Mali": "Bamako", "Oman": "Muscat", "Poland": "Warsaw", "Sweden": "Stockholm",
             "Austria": "Vienna", "Greece": "Athens", "Japan": "Tokyo", "Canada": "Ottawa", "Chad": "N'Djamena",
             "Ireland": "Dublin", "Portugal": "Lisbon", "Hungary": "Budapest", "Finland": "Helsinki",
             "Denmark": "Copenhagen", "Belgium": "Brussels", "Turkey": "Ankara", "Thailand": "Bangkok",
             "Vietnam": "Hanoi", "Mongolia": "Ulaanbaatar", "Morocco": "Rabat", "Senegal": "Dakar",
             "Uganda": "Kampala", "Bolivia": "Sucre", "Ecuador": "Quito", "Uruguay": "Montevideo",
             "Jordan": "Amman", "Qatar": "Doha", "Latvia": "Riga", "Croatia": "Zagreb"}
# Each country belongs to one family, so that no two groups hold the same task (a capital asked twice
# in other words is a real near-duplicate, which the labels would call distinct).
TYPO_COUNTRIES = sorted(COUNTRIES)[::2]
SWAP_COUNTRIES = sorted(COUNTRIES)[1::2]
RIVERS = {"Nile": 6650, "Amazon": 6400, "Yangtze": 6300, "Mississippi": 6275, "Yenisei": 5539, "Ob": 5410,
          "Congo": 4700, "Amur": 4444, "Lena": 4400, "Mekong": 4350, "Niger": 4200, "Danube": 2850,
          "Volga": 3530, "Rhine": 1230, "Thames": 346, "Seine": 777}
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "peach", "plum", "kiwi", "pear", "fig"]
TOPICS = ["photosynthesis", "inflation", "a compiler", "plate tectonics", "the water cycle", "a vaccine",
          "compound interest", "a black hole", "natural selection", "an electric motor", "a database index",
          "supply and demand", "the immune system", "a hash table", "climate", "a transistor", "erosion",
          "an earthquake", "recursion", "a rainbow"]
FILLER_TEXT = ("the system the team the result each step the process that value this part a reason the model "
               "every case the data our goal its effect the method the change some users the outcome")
FILLER_WORDS = FILLER_TEXT.split()


def typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word + word[-1]
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def typo_in(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and w.islower() and len(w) >= 4]
    i = rng.choice(candidates)
    words[i] = typo(words[i], rng)
    return " ".join(words)


def paragraph(rng: random.Random, n_words: int) -> str:
    """A long answer: sentences from a small vocabulary (so one changed word is a small change)."""
    verbs = ["changes", "follows", "explains", "limits", "supports", "shapes", "drives", "reflects", "reduces"]
    sentences, count = [], 0
    while count < n_words:
        s = f"{rng.choice(FILLER_WORDS).capitalize()} {rng.choice(verbs)} {' '.join(rng.sample(FILLER_WORDS, 5))}."
        sentences.append(s)
        count += len(s.split())
    return " ".join(sentences)


def one_word_changed(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = rng.randrange(1, len(words) - 1)
    replacement = rng.choice([w for w in ("quickly", "rarely", "always", "never", "often", "partly") if w != words[i]])
    words[i] = replacement + ("." if words[i].endswith(".") else "")
    return " ".join(words)


# ------------------------------------------------------------------------------ tune families
def typo_family(rng, k):
    country = rng.choice(TYPO_COUNTRIES)
    prompt = rng.choice(["What is the capital city of {c}?", "Please give me the capital of {c}.",
                         "Tell me which city is the capital of {c}.", "Capital city of {c}, please?"]).format(c=country)
    original = (prompt, COUNTRIES[country])
    return original, [((typo_in(prompt, rng), COUNTRIES[country]), "near_duplicate")]


def filler_family(rng, k):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    prompt = f"Add {a} and {b}."
    variants = [f"Please add {a} and {b}.", f"Could you add {a} and {b}?", f"Hi, add {a} and {b}.",
                f"Add {a} and {b} for me."]
    return (prompt, str(a + b)), [((rng.choice(variants), str(a + b)), "near_duplicate")]


def comma_list_family(rng, k):
    xs = rng.sample(range(1, 40), rng.randint(4, 7))
    prompt = "Sort these numbers: {}."
    out = []
    dropped = [x for x in xs if x != rng.choice(xs)]
    out.append(((prompt.format(", ".join(map(str, dropped))), ", ".join(map(str, sorted(dropped)))), "distinct"))
    changed = [*xs[:-1], max(xs) + rng.randint(1, 9)]
    out.append(((prompt.format(", ".join(map(str, changed))), ", ".join(map(str, sorted(changed)))), "distinct"))
    return (prompt.format(", ".join(map(str, xs))), ", ".join(map(str, sorted(xs)))), out


def number_swap_family(rng, k):
    if k % 2:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        c = b + rng.randint(1, 9)
        return (f"Add {a} and {b}.", str(a + b)), [((f"Add {a} and {c}.", str(a + c)), "distinct")]
    n = rng.randrange(3, 99, 2)
    m = n + 2 * rng.randint(1, 5)
    return (f"Is {n} an odd number?", "Yes"), [((f"Is {m} an odd number?", "Yes"), "distinct")]


def entity_swap_family(rng, k):
    kind = k % 4
    if kind == 3:
        a, b = rng.sample(sorted(RIVERS), 2)
        prompt = "How long is the {} river in km?"
        return (prompt.format(a), str(RIVERS[a])), [((prompt.format(b), str(RIVERS[b])), "distinct")]
    a, b = rng.sample(SWAP_COUNTRIES, 2)
    prompt = ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital of {}."][kind]
    return (prompt.format(a), COUNTRIES[a]), [((prompt.format(b), COUNTRIES[b]), "distinct")]


def repunctuated_family(rng, k):
    fruit = rng.choice(FRUITS)
    n = rng.randint(2, 9)
    prompt = f"Spell {fruit} backwards, then repeat it {n} times."
    answer = " ".join([fruit[::-1]] * n)
    return (prompt, answer), [((prompt, rng.choice([f"{answer}.", answer.upper(), f"{answer}!"])), "near_duplicate")]


# ------------------------------------------------------------------------------ heldout families
def space_list_family(rng, k):
    rivers = rng.sample(sorted(RIVERS), rng.randint(4, 7))
    def task(items):
        return (f"Rank these rivers by length: {' '.join(items)}",
                " ".join(sorted(items, key=lambda r: -RIVERS[r])))
    out = []
    for _ in range(2):
        dropped = [r for r in rivers if r != rng.choice(rivers)]
        out.append((task(dropped), "distinct"))
    return task(rivers), out


def long_answer_family(rng, k):
    topic = TOPICS[k % len(TOPICS)]
    prompt = f"Explain {topic} to a new colleague, case {k}."
    answer = paragraph(rng, rng.randint(40, 80))
    return (prompt, answer), [((prompt, one_word_changed(answer, rng)), "near_duplicate")]


def long_answer_new_family(rng, k):
    topic = TOPICS[k % len(TOPICS)]
    prompt = f"Summarize what we know about {topic}, item {k}."
    answer = paragraph(rng, rng.randint(40, 80))
    extra = f" {paragraph(rng, 12)}"
    return (prompt, answer), [((prompt, answer + extra), "distinct")]


def word_order_family(rng, k):
    topic = rng.choice(TOPICS)
    n = rng.randint(2, 5)
    prompt = f"In {n} sentences, describe {topic}."
    answer = paragraph(rng, 12)
    return (prompt, answer), [((f"Describe {topic} in {n} sentences.", answer), "near_duplicate")]


def paraphrase_family(rng, k):
    a, b = sorted(rng.sample(range(2, 31), 2))  # a < b: "19 by 21" and "21 by 19" would be one task
    asked = rng.choice(["What do you get when you multiply {a} by {b}?", "What is {a} times {b}?"])
    said = rng.choice(["Compute the product of {a} and {b}.", "If I have {a} groups of {b}, how many in total?"])
    return (asked.format(a=a, b=b), str(a * b)), [((said.format(a=a, b=b), str(a * b)), "distinct")]


def same_answer_family(rng, k):
    a = rng.randint(3, 40)
    return (f"How many sides does a polygon with {a} vertices have?", str(a)), [
        ((f"What number comes right after {a - 1}?", str(a)), "distinct")]


def noisy_copy_family(rng, k):
    topic = rng.choice(TOPICS)
    prompt = f"Give one everyday example of {topic} and why it matters."
    answer = paragraph(rng, 20)
    noisy = typo_in(prompt, rng).upper().replace(" ", "  ", 2).replace(".", " .")
    return (prompt, answer), [((noisy, answer.replace(". ", ".  ")), "near_duplicate")]


FAMILIES = {
    "tune": {"typo": typo_family, "filler": filler_family, "comma_list": comma_list_family,
             "number_swap": number_swap_family, "entity_swap": entity_swap_family,
             "repunctuated": repunctuated_family},
    "heldout": {"space_list": space_list_family, "long_answer": long_answer_family,
                "long_answer_new": long_answer_new_family, "word_order": word_order_family,
                "paraphrase": paraphrase_family, "same_answer": same_answer_family,
                "noisy_copy": noisy_copy_family},
}


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


def main() -> None:
    rng = random.Random(SEED)
    rows, truth, seen = [], [], set()
    for split, families in FAMILIES.items():
        for family, make in families.items():
            groups, tries = 0, 0
            while groups < GROUPS:
                tries += 1
                assert tries < 100 * GROUPS, f"{family}: cannot make {GROUPS} distinct groups"
                original, variants = make(rng, groups)
                keys = [norm(p) + "\t" + norm(r) for p, r in [original, *(v for v, _ in variants)]]
                if len(set(keys)) < len(keys) or seen & set(keys):
                    continue  # a group must be new records, and its variants other than its original
                seen |= set(keys)
                base_id = f"{family}-{groups:03d}"
                rows.append({"id": base_id, "prompt": original[0], "response": original[1]})
                truth.append({"id": base_id, "family": family, "split": split, "kind": "original", "of": base_id})
                for v, ((prompt, response), kind) in enumerate(variants):
                    rows.append({"id": f"{base_id}-{v}", "prompt": prompt, "response": response})
                    truth.append({"id": f"{base_id}-{v}", "family": family, "split": split, "kind": kind,
                                  "of": base_id})
                groups += 1
    # Shuffle groups' variants after their originals: keep-the-first must keep the original.
    group_of = {t["id"]: t["of"] for t in truth}
    place = {t["id"]: rng.random() for t in truth if t["kind"] == "original"}
    for t in truth:
        if t["kind"] != "original":  # anywhere after its original
            start = place[t["of"]]
            place[t["id"]] = start + rng.random() * (1 - start)
    rows.sort(key=lambda r: (place[r["id"]], r["id"] != group_of[r["id"]]))
    OUT.mkdir(exist_ok=True)
    for name, data in (("families.jsonl", rows), ("families_truth.jsonl", truth)):
        with (OUT / name).open("w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
    print(f"wrote {len(rows)} records in {sum(len(f) for f in FAMILIES.values())} families to {OUT}")


if __name__ == "__main__":
    main()
