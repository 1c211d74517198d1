"""Which INT4 recipe for a checkpoint: each recipe built from the same FP32 graph and scored
against it on the same tokens (KL per token, its 99th percentile, top-1 agreement; size), so a
profile's `quant_int4` default is chosen on its own weights, not the tiny model's.

    python -m tools.int4_recipes --checkpoint models/base --out reports/int4_recipes_smollm2.md

The tokens: the first held-out general documents (plain text) and chat turns of the domain and
general test sets with their reference answers (the model's own format), as evaluate scores them.
A recipe is `name: quant_int4 overrides`; awq is searched and folded on the checkpoint, rebuilt,
then quantized with rtn, exactly as the quant_int4 stage does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from stages.common.atomic import write_json, write_text
from stages.common.awq import AwqSpec, scaled_checkpoint
from stages.common.chat import prompt_ids, response_ids
from stages.common.checkpoint import load_tokenizer
from stages.common.genai import GenaiModel
from stages.common.lm import document_windows, next_token_fidelity
from stages.common.onnx_models import copy_support_files, folder_megabytes, load, run_builder, save_canonical
from stages.common.params import compose
from stages.common.records import read_jsonl
from stages.common.runtime import cpu_description, progress
from stages.common.weight_only import WeightOnlySpec, quantize_weights

RECIPES = {  # name -> quant_int4 overrides (on conf/quant_int4/default.yaml)
    "rtn b32 sym, lm_head 8-bit": ["quant_int4.block_size=32"],
    "rtn b32 sym, all 4-bit": ["quant_int4.block_size=32", "quant_int4.keep_8bit=[]"],
    "rtn b32 asym, lm_head 8-bit": ["quant_int4.block_size=32", "quant_int4.symmetric=false"],
    "rtn b16 sym, lm_head 8-bit": ["quant_int4.block_size=16"],
    "rtn b32 sym, lm_head+down_proj 8-bit": ["quant_int4.block_size=32", "quant_int4.keep_8bit=[lm_head,down_proj]"],
    "hqq b32, lm_head 8-bit": ["quant_int4.block_size=32", "quant_int4.algorithm=hqq"],
    "hqq b16, lm_head 8-bit": ["quant_int4.block_size=16", "quant_int4.algorithm=hqq"],
    "hqq b64, lm_head 8-bit": ["quant_int4.block_size=64", "quant_int4.algorithm=hqq"],
    "k_quant, lm_head 8-bit": ["quant_int4.algorithm=k_quant"],
    "awq b32 sym (clip), lm_head 8-bit": ["quant_int4.block_size=32", "quant_int4.algorithm=awq"],
    "awq b16 sym (clip), lm_head 8-bit": ["quant_int4.block_size=16", "quant_int4.algorithm=awq"],
}


def scoring_ids(tokenizer, documents: int, turns: int, window: int) -> list[list[int]]:
    heldout = read_jsonl("data/eval/general_heldout.jsonl", "text")[:documents]
    ids = [w for r in heldout for w in document_windows(tokenizer, r["text"], window)]
    for name in ("domain_test", "general_test"):
        for r in read_jsonl(f"data/eval/{name}.jsonl", "task")[:turns]:
            ids.append(prompt_ids(tokenizer, r["prompt"]) + response_ids(tokenizer, r["answer"]))
    return ids


def build(recipe: list[str], checkpoint: Path, fp32: Path, out: Path, calibration: list[list[int]], work: Path):
    q = compose(recipe).quant_int4
    spec = WeightOnlySpec.from_params(q, "quant_int4")
    src = fp32
    if q.algorithm == "awq":
        scaled_checkpoint(checkpoint, work / "awq", calibration, AwqSpec(q.block_size, q.symmetric, q.awq.clip))
        src = work / "awq-fp32"
        run_builder(work / "awq", src, "fp32", "cpu")
        spec = WeightOnlySpec(bits=4, algorithm="rtn", block_size=q.block_size, symmetric=q.symmetric,
                              accuracy_level=q.accuracy_level, embedding=q.quantize_embedding,
                              keep_8bit=tuple(q.keep_8bit))
    copy_support_files(src, out)
    save_canonical(quantize_weights(load(src), spec), out)


def score(reference: list[np.ndarray], model: GenaiModel, ids: list[list[int]]) -> dict:
    kls, tops = [], []
    for ref, seq in zip(reference, ids, strict=True):
        kl, top = next_token_fidelity(ref, model.logits(seq))
        kls.append(kl)
        tops.append(top)
    kl, top = np.concatenate(kls), np.concatenate(tops)
    return {"kl": round(float(kl.mean()), 4), "kl_p99": round(float(np.percentile(kl, 99)), 3),
            "top1": round(float(top.mean()), 4), "positions": int(kl.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/base"))
    parser.add_argument("--documents", type=int, default=8, help="held-out general documents")
    parser.add_argument("--turns", type=int, default=20, help="chat turns per task set")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--calibration", type=int, default=32, help="training records for awq")
    parser.add_argument("--out", type=Path, default=Path("reports/int4_recipes.md"))
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), help="names of RECIPES to run")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.checkpoint)
    ids = scoring_ids(tokenizer, args.documents, args.turns, args.window)
    calibration = [prompt_ids(tokenizer, r["prompt"]) + response_ids(tokenizer, r["response"])
                   for r in read_jsonl("data/raw/domain_train.jsonl", "instruction")[: args.calibration]]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="int4-recipes-") as tmp:
        work = Path(tmp)
        run_builder(args.checkpoint, work / "fp32", "fp32", "cpu")
        fp32 = GenaiModel(work / "fp32")
        reference = [fp32.logits(seq) for seq in ids]
        fp32_mb = folder_megabytes(work / "fp32", weights_only=True)
        for name in progress(args.recipes, desc="INT4 recipes", total=len(args.recipes)):
            recipe_dir = work / "r"
            start = time.perf_counter()
            build(RECIPES[name], args.checkpoint, work / "fp32", recipe_dir, calibration, work)
            built = time.perf_counter() - start
            rows[name] = {**score(reference, GenaiModel(recipe_dir), ids),
                          "size_vs_fp32": round(folder_megabytes(recipe_dir, weights_only=True) / fp32_mb, 3),
                          "build_s": round(built, 1), "overrides": RECIPES[name]}
            print(name, rows[name], flush=True)
            for path in (recipe_dir, work / "awq", work / "awq-fp32"):
                if path.exists():
                    import shutil

                    shutil.rmtree(path)
    lines = [f"# INT4 recipes on {args.checkpoint} ({len(ids)} sequences, {rows[next(iter(rows))]['positions']} "
             "positions: held-out text and chat turns, each recipe vs the FP32 graph)", "",
             f"CPU: {cpu_description()}", "",
             "| recipe | KL/token | KL p99 | top-1 | size vs FP32 | build s |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["kl"]):
        lines.append(f"| {name} | {r['kl']:.4f} | {r['kl_p99']:.3f} | {r['top1']:.3f} | {r['size_vs_fp32']:.3f} "
                     f"| {r['build_s']:.0f} |")
    write_text(args.out, "\n".join(lines) + "\n")
    write_json(args.out.with_suffix(".json"), rows)
    print("\n".join(lines))
    print(json.dumps({"best": min(rows, key=lambda k: rows[k]["kl"])}))


if __name__ == "__main__":
    main()
