"""Writes data/bench/short_instructions.jsonl and its labelled truth: a dedup benchmark of short
instruction records (a few words of prompt, a few of answer), the shape where word-shingle
Jaccard misleads.

    python data/make_short_instructions.py

Unlike the embedded ticket generator, this one *seeks* the hard cases. Records come from a few
dozen task templates whose parameters are drawn from small ranges, so many distinct tasks sit a
word or a number apart ("Convert 3 km to miles" / "Convert 30 km to miles"; two sorts of
overlapping lists) and have different answers: near-misses that must be kept. Into that we
plant true duplicates, each labelled with its original:
- near_duplicate: one change, the way people re-submit a record: the prompt re-worded (a typo,
  "please", a question mark, a dropped word, a different opening; never a parameter) with the
  same answer, or the same prompt with the answer re-punctuated ("24." or "The answer is 24.");
- exact_duplicate: the same text up to case, spacing and Unicode width.
Each unplanted record is a distinct task (template + parameters; one wording per template), so
every duplicate is labelled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "bench"
SEED = 20261201
RECORDS = 900          # distinct tasks before planting
NEAR, EXACT = 90, 30   # planted duplicates

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
            "Egypt": "Cairo", "Chile": "Santiago", "Spain": "Madrid", "Ghana": "Accra", "Nepal": "Kathmandu",
            "Italy": "Rome", "Cuba": "Havana", "Iran": "Tehran", "Laos": "Vientiane", "Mali": "Bamako",
            "Oman": "Muscat", "Poland": "Warsaw", "Sweden": "Stockholm", "Austria": "Vienna", "Greece": "Athens"}
ANTONYMS = {"hot": "cold", "tall": "short", "fast": "slow", "early": "late", "light": "dark", "wet": "dry",
            "open": "closed", "full": "empty", "loud": "quiet", "rich": "poor", "hard": "soft", "old": "new",
            "thick": "thin", "strong": "weak", "high": "low", "near": "far", "happy": "sad", "clean": "dirty"}
SPANISH = {"cat": "gato", "dog": "perro", "house": "casa", "water": "agua", "book": "libro", "tree": "árbol",
           "bread": "pan", "milk": "leche", "sun": "sol", "moon": "luna", "door": "puerta", "hand": "mano",
           "red": "rojo", "green": "verde", "car": "coche", "friend": "amigo", "city": "ciudad"}
WORDS = ["apple", "banana", "cherry", "orange", "lemon", "mango", "grape", "melon", "peach", "plum", "kiwi",
         "pear", "river", "garden", "window", "pencil", "rocket", "planet", "silver", "marble"]
UNITS = {("km", "miles"): 0.621371, ("miles", "km"): 1.609344, ("kg", "pounds"): 2.204623,
         ("pounds", "kg"): 0.453592, ("liters", "gallons"): 0.264172, ("inches", "cm"): 2.54}


def fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def task(rng: random.Random) -> tuple[int, str, str]:
    """One short task and its answer; parameters from small ranges, so neighbours abound."""
    kind = rng.randrange(12)
    return kind, *_task(kind, rng)


def _task(kind: int, rng: random.Random) -> tuple[str, str]:
    if kind == 0:
        (a, b), n = rng.choice(sorted(UNITS)), rng.choice([1, 2, 3, 5, 10, 12, 20, 25, 30, 50, 100])
        return f"Convert {n} {a} to {b}.", f"{fmt(n * UNITS[(a, b)])} {b}"
    if kind == 1:
        xs = rng.sample(range(1, 20), rng.randint(4, 6))
        return f"Sort these numbers: {', '.join(map(str, xs))}.", ", ".join(map(str, sorted(xs)))
    if kind == 2:
        country = rng.choice(sorted(CAPITALS))
        opener = ["What is the capital of", "Name the capital of", "Which city is the capital of"][len(country) % 3]
        return f"{opener} {country}?", CAPITALS[country]
    if kind == 3:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        return f"Add {a} and {b}.", str(a + b)
    if kind == 4:
        a, b = rng.randint(2, 15), rng.randint(2, 15)
        return f"Multiply {a} by {b}.", str(a * b)
    if kind == 5:
        word = rng.choice(WORDS)
        return f"Spell {word} backwards.", word[::-1]
    if kind == 6:
        word = rng.choice(sorted(ANTONYMS))
        return f"What is the opposite of {word}?", ANTONYMS[word]
    if kind == 7:
        word = rng.choice(sorted(SPANISH))
        return f"Translate {word} into Spanish.", SPANISH[word]
    if kind == 8:
        n = rng.randint(2, 99)
        prime = n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))
        return f"Is {n} a prime number?", "Yes" if prime else "No"
    if kind == 9:
        xs = rng.sample(WORDS, rng.randint(3, 5))
        return f"Which of these is longest: {', '.join(xs)}?", max(xs, key=lambda w: (len(w), w))
    if kind == 10:
        word = rng.choice(WORDS)
        return f"Count the vowels in {word}.", str(sum(c in "aeiou" for c in word))
    xs = rng.sample(range(1, 30), rng.randint(3, 5))
    return f"What is the largest of {', '.join(map(str, xs))}?", str(max(xs))


def typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word + word[-1]
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


# The words a task's parameters are made of: a re-submission keeps them (a typo in a list item
# or a dropped number would make another task, not a copy of this one).
PARAMETER_WORDS = {w.casefold() for w in [*CAPITALS, *CAPITALS.values(), *ANTONYMS, *SPANISH, *WORDS,
                                          *(u for pair in UNITS for u in pair), "Spanish"]}


def template_positions(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words)
            if w.strip(".,?:").isalpha() and w.strip(".,?:").casefold() not in PARAMETER_WORDS]


def reword(prompt: str, rng: random.Random) -> str:
    """How a person re-submits the same request: the template's words change, never its parameters."""
    words = prompt.split(" ")
    choice = rng.randrange(6)
    if choice == 0:
        i = rng.choice(template_positions(words))
        words[i] = typo(words[i], rng)
    elif choice == 1:
        words = ["Please", words[0].lower(), *words[1:]]
    elif choice == 2:
        words[-1] = words[-1].rstrip(".?") + rng.choice(["?", " please.", " for me."])
    elif choice == 3:
        words = [rng.choice(["Quick question:", "Hi,", "Hey,", "Can you help?"]), *words]
    elif choice == 4 and len(template_positions(words)) > 2:
        del words[rng.choice(template_positions(words)[1:])]
    else:
        words = ["Could", "you", words[0].lower(), *words[1:]]
        words[-1] = words[-1].rstrip(".?") + "?"
    return " ".join(words)


def repunctuate(answer: str, rng: random.Random) -> str:
    return rng.choice([f"{answer}.", f"The answer is {answer}.", f"{answer}!"])


def disguise(text: str, rng: random.Random) -> str:
    """Equal after NFKC + casefold + whitespace folding."""
    return rng.choice([text.upper(), "  " + text.replace(" ", "  ", 2) + " ", text.replace("o", "\uff4f", 1)])


def normal(text: str) -> str:
    return " ".join(text.casefold().split())


def main() -> None:
    rng = random.Random(SEED)
    tasks, seen = [], set()
    while len(tasks) < RECORDS:
        kind, prompt, answer = task(rng)
        identity = (kind, normal(prompt))  # one record per task: the template's parameters differ
        if identity not in seen:
            seen.add(identity)
            tasks.append((prompt, answer))
    rows = [{"id": f"short-{i:04d}", "prompt": p, "response": a} for i, (p, a) in enumerate(tasks)]
    truth = []
    for k, row in enumerate(rng.sample(list(rows), NEAR + EXACT)):  # originals only, never a copy
        if k < NEAR:
            # One change, as a re-submission makes: the prompt re-worded, or the answer re-punctuated.
            prompt, response = row["prompt"], row["response"]
            while normal(prompt) == normal(row["prompt"]) and normal(response) == normal(row["response"]):
                prompt, response = (reword(prompt, rng), response) if k % 3 else (prompt, repunctuate(response, rng))
            copy = {"id": f"short-near-{k:03d}", "prompt": prompt, "response": response}
            kind = "near_duplicate"
        else:
            copy = {"id": f"short-dup-{k - NEAR:03d}", "prompt": disguise(row["prompt"], rng),
                    "response": row["response"]}
            kind = "exact_duplicate"
        # After its original, so "keep the first" keeps the original.
        rows.insert(rng.randint(rows.index(row) + 1, len(rows)), copy)
        truth.append({"id": copy["id"], "kind": kind, "of": row["id"]})
    OUT.mkdir(exist_ok=True)
    for name, data in (("short_instructions.jsonl", rows), ("short_instructions_truth.jsonl", truth)):
        with (OUT / name).open("w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
    print(f"wrote {len(rows)} records ({NEAR} near, {EXACT} exact duplicates planted) to {OUT}")


if __name__ == "__main__":
    main()
