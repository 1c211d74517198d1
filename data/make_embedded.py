"""Build the embedded data set once; its output is committed under data/raw and data/eval.

Run as `python data/make_embedded.py` (CPython 3.11.7, whose standard library is the general
corpus). Deterministic: the same Python and seed write byte-identical files. data/README.md is
the data card: what each file is, where it came from, and its license.

Three sources:
- general corpus: docstrings of the CPython standard library (PSF license), split by module so
  that held-out text comes from modules the base never read;
- general task: "which top-level package does <qualified name> belong to?" over the same
  library's definitions (a short copy the tiny base learns in pre-training);
- domain task: seeded support-ticket routing ("<team>/<priority>"), checkable by exact match.

Inside the raw domain training set we plant exact duplicates, near-duplicates and eval leaks,
and write the ground truth to data/raw/planted.jsonl so the dedup stage can be scored.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import sysconfig
from pathlib import Path

SEED = 20261124
HERE = Path(__file__).resolve().parent
RAW, EVAL = HERE / "raw", HERE / "eval"

# ---------------------------------------------------------------- general corpus and task
SKIP_PACKAGES = {"test", "idlelib", "tkinter", "lib2to3", "site-packages", "ensurepip",
                 "turtledemo", "pydoc_data", "__pycache__"}
MIN_DOCSTRING_CHARS = 120


def _module_name(lib: Path, path: Path) -> str:
    parts = list(path.relative_to(lib).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stdlib_definitions() -> tuple[list[dict], list[dict]]:
    """Docstrings (one record each, first occurrence only) and public qualified names."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in lib.rglob("*.py") if not set(p.relative_to(lib).parts) & SKIP_PACKAGES)
    docs: list[dict] = []
    names: list[dict] = []
    seen: set[str] = set()
    for path in files:
        module = _module_name(lib, path)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        doc = ast.get_docstring(tree)
        if doc:
            _add_doc(docs, seen, module, module, doc)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names.append({"module": module, "qualname": f"{module}.{node.name}"})
                _add_doc(docs, seen, module, f"{module}.{node.name}", ast.get_docstring(node))
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        qual = f"{module}.{node.name}.{item.name}"
                        names.append({"module": module, "qualname": qual})
                        _add_doc(docs, seen, module, qual, ast.get_docstring(item))
    return docs, names


def _add_doc(docs: list[dict], seen: set[str], module: str, qual: str, doc: str | None) -> None:
    if not doc:
        return
    text = " ".join(doc.split())
    if len(text) < MIN_DOCSTRING_CHARS or text in seen:
        return
    seen.add(text)
    docs.append({"module": module, "qualname": qual, "text": text})


def split_by_module(rows: list[dict], heldout_fraction: float, rng: random.Random) -> tuple[list, list]:
    modules = sorted({r["module"].split(".")[0] for r in rows})
    rng.shuffle(modules)
    heldout = set(modules[: max(1, int(len(modules) * heldout_fraction))])
    keep = [r for r in rows if r["module"].split(".")[0] not in heldout]
    out = [r for r in rows if r["module"].split(".")[0] in heldout]
    return keep, out


def general_task_prompt(qualname: str) -> str:
    return f"Which top-level package of the Python standard library does {qualname} belong to?"


# ---------------------------------------------------------------- domain task: ticket routing
TEAMS = {
    "network": ["wifi", "VPN tunnel", "ethernet port", "router", "DNS lookup", "proxy", "firewall rule"],
    "hardware": ["printer", "laptop screen", "keyboard", "docking station", "monitor", "headset", "webcam"],
    "billing": ["invoice", "refund", "card charge", "subscription fee", "receipt", "purchase order"],
    "access": ["password reset", "login page", "locked account", "authenticator app", "door badge", "SSO token"],
    "storage": ["shared drive", "disk quota", "nightly backup", "file share", "cloud folder", "archive volume"],
}
PRIORITY_CUES = {
    "high": ["This is urgent.", "The whole team is blocked.", "Production is down because of it.",
             "We need it fixed before noon today.", "Customers are waiting on us right now."],
    "low": ["No rush at all.", "Whenever someone has time.", "It is only a minor annoyance.",
            "Sometime next week is fine.", "Low impact, just letting you know."],
    "normal": ["Please take a look.", "Could someone check it?", "Thanks in advance for the help.",
               "Let me know if you need details.", "I would appreciate a fix."],
}
SYMPTOMS = ["stopped working", "keeps failing", "shows error {code}", "has been flaky since {day}",
            "is extremely slow", "rejects every attempt", "behaves strangely after the update",
            "went offline around {hour} o'clock", "gives a blank page", "was broken by a restart"]
OPENERS = ["Hi support,", "Hello,", "Good morning,", "Hey team,", "Dear helpdesk,", "Hi all,",
           "Quick one:", "Hello again,"]
PLACES = ["in room {room}", "on floor {floor}", "at the {site} office", "in the {site} lab",
          "for the {dept} group", "near desk {room}"]
FIRST = ["Ana", "Bilal", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena",
         "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara"]
SITES = ["Lyon", "Osaka", "Austin", "Nairobi", "Oslo", "Lima", "Pune", "Leeds", "Porto", "Perth"]
DEPTS = ["finance", "design", "legal", "research", "sales", "support", "platform", "payroll"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "yesterday"]
DOMAIN_INSTRUCTION = "Route this ticket as team/priority."


def make_ticket(rng: random.Random) -> tuple[str, str]:
    team = rng.choice(sorted(TEAMS))
    priority = rng.choice(["high", "low", "normal"])
    thing = rng.choice(TEAMS[team])
    slots = {"code": f"E{rng.randint(100, 999)}", "day": rng.choice(DAYS), "hour": rng.randint(1, 12),
             "room": rng.randint(100, 899), "floor": rng.randint(1, 40), "site": rng.choice(SITES),
             "dept": rng.choice(DEPTS)}
    symptom = rng.choice(SYMPTOMS).format(**slots)
    place = rng.choice(PLACES).format(**slots)
    # Every 13-word window crosses a high-entropy slot (ticket number, extension, reference), so
    # two natural tickets never share a 13-gram: only planted leaks do.
    ticket = (f"Ticket {rng.randint(10000, 99999)} from {rng.choice(FIRST)}: {rng.choice(OPENERS)} "
              f"the {thing} {place} (ext. {rng.randint(1000, 9999)}) {symptom}, ref R{rng.randint(1000, 9999)}. "
              f"{rng.choice(PRIORITY_CUES[priority])} [component: {thing}]")
    return f"{DOMAIN_INSTRUCTION} {ticket}", f"{team}/{priority}"


# ---------------------------------------------------------------- similarity (generator-side checks)
def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def distinct_tickets(rng: random.Random, count: int, max_jaccard: float) -> list[tuple[str, str]]:
    """Tickets whose pairwise word-3-gram Jaccard stays below max_jaccard: no accidental near-dups,
    so that every near-duplicate in the raw set is a planted one."""
    out: list[tuple[str, str]] = []
    sigs: list[set] = []
    while len(out) < count:
        prompt, answer = make_ticket(rng)
        sig = shingles(f"{prompt} {answer}")
        if all(jaccard(sig, s) < max_jaccard for s in sigs):
            out.append((prompt, answer))
            sigs.append(sig)
    return out


# ---------------------------------------------------------------- planting
def vary_surface(text: str, rng: random.Random) -> str:
    """Same text after NFKC + casefold + whitespace folding: an exact duplicate in disguise."""
    choice = rng.randrange(3)
    if choice == 0:
        return text.upper()
    if choice == 1:
        return "  " + text.replace(" ", "   ", 3) + " \n"
    return text.replace("Ticket", "\uff34icket").replace("fi", "\ufb01")  # fullwidth T, fi ligature


def edit_words(text: str, rng: random.Random, edits: int) -> str:
    """A near-duplicate: the same ticket with a word or two replaced."""
    tokens = text.split(" ")
    for index in rng.sample(range(2, len(tokens) - 1), edits):
        tokens[index] = rng.choice(["really", "again", "now", "still", "today", "also"])
    return " ".join(tokens)


# Eval sets sized to resolve the gates' margins (data/README.md, "Sizing the eval sets").
GENERAL_TEST_ITEMS = 1000
DOMAIN_TEST_ITEMS = 1000


def sized_eval_sets(names: list[dict], tickets: list[tuple[str, str]], general_test: list[dict],
                    domain_test: list[dict]) -> tuple[list[dict], list[dict]]:
    """The test sets grown to their gated sizes. The extra items come after everything else, from
    a stream of their own, so every other file keeps the bytes it had at 200 items: more general
    names (disjoint from training), and more tickets kept distinct from every ticket above."""
    rng = random.Random(SEED + 1)
    general = general_test + [
        {"id": f"gen-test-{i:04d}", "prompt": general_task_prompt(n["qualname"]), "answer": n["module"].split(".")[0]}
        for i, n in enumerate(names[4000:4000 + GENERAL_TEST_ITEMS]) if i >= len(general_test)]
    sigs = [shingles(f"{p} {a}") for p, a in tickets]
    domain = list(domain_test)
    while len(domain) < DOMAIN_TEST_ITEMS:
        prompt, answer = make_ticket(rng)
        sig = shingles(f"{prompt} {answer}")
        if all(jaccard(sig, s) < 0.45 for s in sigs):
            domain.append({"id": f"dom-test-{len(domain):04d}", "prompt": prompt, "answer": answer})
            sigs.append(sig)
    return general, domain


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)

    docs, names = stdlib_definitions()
    corpus, heldout = split_by_module(docs, heldout_fraction=0.12, rng=rng)
    corpus_rows = [{"id": f"doc-{i:05d}", "text": d["text"]} for i, d in enumerate(corpus)]
    heldout_rows = [{"id": f"heldout-{i:05d}", "text": d["text"]} for i, d in enumerate(heldout)]

    # General task: disjoint names, split at random (packages recur, names do not).
    rng.shuffle(names)
    general_train = [{"id": f"gen-{i:05d}", "prompt": general_task_prompt(n["qualname"]),
                      "response": n["module"].split(".")[0]} for i, n in enumerate(names[:4000])]
    general_test = [{"id": f"gen-test-{i:04d}", "prompt": general_task_prompt(n["qualname"]),
                     "answer": n["module"].split(".")[0]} for i, n in enumerate(names[4000:4200])]

    tickets = distinct_tickets(rng, 2000 + 150 + 200, max_jaccard=0.45)
    train_t, val_t, test_t = tickets[:2000], tickets[2000:2150], tickets[2150:]
    domain_train = [{"id": f"dom-{i:05d}", "prompt": p, "response": a} for i, (p, a) in enumerate(train_t)]
    domain_val = [{"id": f"dom-val-{i:04d}", "prompt": p, "answer": a} for i, (p, a) in enumerate(val_t)]
    domain_test = [{"id": f"dom-test-{i:04d}", "prompt": p, "answer": a} for i, (p, a) in enumerate(test_t)]

    planted: list[dict] = []
    originals = rng.sample(range(len(domain_train)), 100)
    extra: list[dict] = []
    for k, src in enumerate(originals[:40]):
        row = domain_train[src]
        extra.append({"id": f"dup-{k:03d}", "prompt": vary_surface(row["prompt"], rng), "response": row["response"]})
        planted.append({"id": extra[-1]["id"], "kind": "exact_duplicate", "of": row["id"]})
    for k, src in enumerate(originals[40:]):
        row = domain_train[src]
        extra.append({"id": f"near-{k:03d}", "prompt": edit_words(row["prompt"], rng, edits=1 + k % 2),
                      "response": row["response"]})
        planted.append({"id": extra[-1]["id"], "kind": "near_duplicate", "of": row["id"]})
    # Eval leaks: verbatim eval prompts, a leak split across prompt and response, short general
    # questions (fewer words than the 13-gram pass needs) and passages of held-out general text.
    leaked_test = rng.sample(domain_test, 14)  # distinct items: 8 copied whole, 6 split in two
    for item in leaked_test[:8] + rng.sample(domain_val, 4):
        extra.append({"id": f"leak-{len(extra):03d}", "prompt": item["prompt"], "response": item["answer"]})
        planted.append({"id": extra[-1]["id"], "kind": "eval_leak", "of": item["id"]})
    for item in leaked_test[8:]:
        w = item["prompt"].split(" ")
        cut = len(w) // 2
        extra.append({"id": f"leak-{len(extra):03d}", "prompt": "Summarize: " + " ".join(w[:cut]),
                      "response": " ".join(w[cut:])})
        planted.append({"id": extra[-1]["id"], "kind": "eval_leak", "of": item["id"]})
    for item in rng.sample(general_test, 8):
        extra.append({"id": f"leak-{len(extra):03d}", "prompt": item["prompt"], "response": item["answer"]})
        planted.append({"id": extra[-1]["id"], "kind": "eval_leak", "of": item["id"]})
    for item in rng.sample([h for h in heldout_rows if len(h["text"].split()) > 40], 6):
        passage = " ".join(item["text"].split()[:30])
        extra.append({"id": f"leak-{len(extra):03d}", "prompt": "Explain this documentation.",
                      "response": passage})
        planted.append({"id": extra[-1]["id"], "kind": "eval_leak", "of": item["id"]})

    general_test, domain_test = sized_eval_sets(names, tickets, general_test, domain_test)

    # Planted rows are interleaved after their originals' positions, deterministically.
    raw_train = list(domain_train)
    for row in extra:
        raw_train.insert(rng.randint(len(raw_train) // 2, len(raw_train)), row)
    # Originals must precede their copies, so "keep the first" keeps the original.
    position = {row["id"]: i for i, row in enumerate(raw_train)}
    for p in planted:
        if p["of"] in position and position[p["of"]] > position[p["id"]]:
            a, b = position[p["of"]], position[p["id"]]
            raw_train[a], raw_train[b] = raw_train[b], raw_train[a]
            position = {row["id"]: i for i, row in enumerate(raw_train)}

    write_jsonl(RAW / "domain_train.jsonl", raw_train)
    write_jsonl(RAW / "planted.jsonl", planted)
    write_jsonl(RAW / "general_corpus.jsonl", corpus_rows)
    write_jsonl(RAW / "general_task_train.jsonl", general_train)
    write_jsonl(EVAL / "domain_val.jsonl", domain_val)
    write_jsonl(EVAL / "domain_test.jsonl", domain_test)
    write_jsonl(EVAL / "general_test.jsonl", general_test)
    write_jsonl(EVAL / "general_heldout.jsonl", heldout_rows)
    for path in sorted([*RAW.glob("*.jsonl"), *EVAL.glob("*.jsonl")]):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(f"{path.relative_to(HERE)}: {sum(1 for _ in path.open())} rows, "
              f"{path.stat().st_size / 1e3:.0f} kB, sha256 {digest}")


if __name__ == "__main__":
    main()
