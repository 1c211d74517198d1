"""make verify-seeds: each gate's verdict per seed, its spread and its worst distance to the
threshold (the tool's own arithmetic; the stages it runs are tested where they live)."""

from tools.verify_seeds import digest, margin, table


def check(point: float, low: float, high: float, verdict: str, direction: str = ">=", threshold: float = 0.3) -> dict:
    return {"metric": "domain_acc", "statistic": "change", "reference": "torch_base", "point": point, "low": low,
            "high": high, "verdict": verdict, "direction": direction, "threshold": threshold}


def test_margin_is_the_bad_side_bound_inside_the_threshold():
    assert margin(check(0.42, 0.40, 0.45, "pass")) == 0.40 - 0.3
    assert margin(check(0.02, -0.01, 0.05, "pass", "<=", 0.10)) == 0.10 - 0.05
    assert margin(check(0.29, 0.27, 0.31, "FAIL")) < 0


def test_a_gate_that_passes_on_some_seeds_only_is_not_robust():
    md, summary = table({1: [check(0.42, 0.40, 0.45, "pass")], 2: [check(0.29, 0.27, 0.31, "FAIL")]})
    row = summary[0]
    assert row["passed"] == 1 and row["seeds"] == 2 and row["worst_margin"] == round(0.27 - 0.3, 4)
    assert row["mean"] == round((0.42 + 0.29) / 2, 4) and row["sd"] > 0.09
    assert "| 1/2 |" in md and "seed 1 | seed 2" in md


def test_a_seed_reuses_its_runs_only_while_the_data_bytes_are_unchanged(tmp_path):
    """Params alone missed a grown eval set: the seed's old evaluation of 300 items was kept."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "redteam.jsonl").write_text('{"id": "a"}\n')
    before = digest(tmp_path / "eval")
    assert digest(tmp_path / "eval") == before
    (tmp_path / "eval" / "redteam.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    grown = digest(tmp_path / "eval")
    (tmp_path / "eval" / "redteam.jsonl").rename(tmp_path / "eval" / "benign.jsonl")
    assert len({before, grown, digest(tmp_path / "eval")}) == 3
