"""Fetch lm-eval tasks' datasets into the local Hugging Face datasets cache, on a machine with a
network, for the offline harness runs (evaluate.lm_eval.tasks):

    python -m tools.fetch_lm_eval_data mmlu_abstract_algebra arc_easy gsm8k

then copy the cache it prints (or point HF_DATASETS_CACHE at a shared copy) to the machine that
runs the pipeline. It is the one command here that uses the network; no stage does.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", help="lm-eval task or group names")
    args = parser.parse_args(argv)
    import datasets
    from lm_eval.tasks import TaskManager, get_task_dict

    get_task_dict(args.tasks, TaskManager())  # building a task downloads its dataset into the cache
    print(f"cached {', '.join(args.tasks)} in {datasets.config.HF_DATASETS_CACHE}")


if __name__ == "__main__":
    main()
