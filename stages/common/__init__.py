"""What every stage shares: params, records, atomic outputs, runtime set-up, checkpoints.

Importing it makes the process offline for the Hugging Face libraries: no stage ever contacts a
hub, and a missing local file is an error instead of a download.
"""

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A fixed thread count: MKL and OpenMP may otherwise use fewer threads when the cores are busy,
# which changes the order of floating-point sums, and so the bytes of a trained model.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")
