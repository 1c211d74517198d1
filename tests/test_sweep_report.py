"""The sweep report reads DVC's record of each experiment and draws the gates' intervals."""

from tools.sweep_report import markdown, plot, points


def experiment(name: str, beta: float, domain: float, passed: bool, algorithm: str = "rtn") -> dict:
    metrics = {
        "metrics/eval/torch_lora.json": {"domain_acc": domain, "general_ppl": 105.0, "general_acc": 0.8},
        "metrics/eval/torch_base.json": {"general_ppl": 100.0},
        "metrics/eval/onnx_int4.json": {"domain_acc": domain - 0.01, "kl": 0.002 if algorithm == "rtn" else 0.001,
                                        "top1": 0.95, "decode_tok_s": 2000.0},
        "metrics/eval/onnx_adapter_int4.json": {"decode_tok_s": 1500.0},
        "metrics/train.json": {"val_kl": 0.5},
        "metrics/gates.json": {"passed": passed, "details": [
            {"rung": "torch_lora", "metric": "domain_acc", "point": domain, "low": domain - 0.04,
             "high": domain + 0.03},
            {"rung": "torch_lora", "metric": "general_ppl", "point": 0.05, "low": 0.04, "high": 0.07}]},
    }
    params = {"train": {"lora": {"r": 8}, "kl_beta": beta}, "quant_int4": {"algorithm": algorithm}}
    return {"name": name, "data": {"params": {"params.yaml": {"data": params}},
                                   "metrics": {k: {"data": v} for k, v in metrics.items()}}}


def test_points_carry_the_gate_intervals_and_the_plot_draws_them(tmp_path):
    shown = [{"experiments": [{"revs": [experiment("a", 0.1, 0.9, False), experiment("b", 0.5, 0.7, True)]}]}]
    rows = points(shown)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert abs(rows[0]["domain_acc_err"][0] - 0.04) < 1e-9 and abs(rows[1]["general_ppl_err"][1] - 0.02) < 1e-9
    assert "| b ★ |" in markdown(rows)
    plot(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_an_int4_algorithm_sweep_shows_fidelity_and_accuracy_per_algorithm():
    shown = [{"experiments": [{"revs": [experiment("rtn", 0.5, 0.7, True), experiment("awq", 0.5, 0.7, True, "awq")]}]}]
    table = markdown(points(shown))
    lora = "8 | 0.5 | 0.700 | +5.00% | 0.800 | 0.500"
    # Equal LoRA runs: the lower INT4 KL at equal INT4 accuracy is the better point.
    assert f"| awq ★ | {lora} | awq | 0.00100 | 0.950 | 0.690 | 0.75x | pass |" in table
    assert f"| rtn | {lora} | rtn | 0.00200 | 0.950 | 0.690 | 0.75x | pass |" in table


def test_an_experiment_still_running_is_left_out():
    """DVC shows a queued or running experiment with its baseline's metrics under its own params."""
    running = {"revs": [experiment("wip", 0.5, 0.9, True, "awq")], "executor": {"state": "running"}}
    done = {"revs": [experiment("done", 0.5, 0.7, True)], "executor": {"state": "success"}}
    assert [r["name"] for r in points([{"experiments": [running, done]}])] == ["done"]
