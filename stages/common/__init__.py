"""What every stage shares: params, records, atomic outputs, runtime set-up, checkpoints.

Importing it makes the process offline for the Hugging Face libraries: no stage ever contacts a
hub, and a missing local file is an error instead of a download.
"""

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
