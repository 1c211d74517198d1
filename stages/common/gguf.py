"""llama.cpp, the runtime a CPU user would otherwise pick: GGUF files made with llama.cpp's own
converter and quantizer, run behind the LanguageModel interface (language_model.py) so the
benchmarks time them with the same loop as the ONNX rungs.

- `convert`: llama.cpp's convert_hf_to_gguf.py, from the llama-cpp-python source distribution of
  the pinned version (the wheel ships the library, not the converter), run unchanged but for two
  patches its Phi3 class needs for a tokenizer it has never seen: Phi-4(-mini)'s byte-level BPE
  read as GPT-2 style (its Phi3 class otherwise demands a SentencePiece tokenizer.model), and the
  pre-tokenizer "default" where the tokenizer's hash is not in its table (a tokenizer trained
  here has none). The GGUF's tokenizer only matters to text; every caller here passes token ids.
- `quantize`: llama_model_quantize, llama.cpp's own quantizer (llama-quantize's code).
- `GgufModel`: llama-cpp-python's Llama, greedy, on token ids.

llama-cpp-python compiles llama.cpp when installed (requirements-bench.txt, `make bench-real`);
it is not a dependency of the pipeline or its tests.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from stages.common.atomic import atomic_path
from stages.common.errors import PipelineError
from stages.common.language_model import time_steps
from stages.common.lm import take_until_stop

# llama.cpp's file types (llama.h's LLAMA_FTYPE_MOSTLY_*), by llama-quantize's names.
FILE_TYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q4_K_S": 14, "Q5_K_M": 17, "Q6_K": 18}
CONVERTER = "convert_hf_to_gguf.py"

# Run inside the converter's process: the two patches (see the module docstring), then its main.
_PATCHED_MAIN = """
import runpy, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/gguf-py"]
import conversion
from conversion.base import TextModel
from conversion.phi import Phi3MiniModel
recognised = TextModel.get_vocab_base_pre
def pre_tokenizer(self, tokenizer):
    try:
        return recognised(self, tokenizer)
    except NotImplementedError:
        return "default"
TextModel.get_vocab_base_pre = pre_tokenizer
Phi3MiniModel.set_vocab = TextModel._set_vocab_gpt2
sys.argv = [sys.argv[1] + "/convert_hf_to_gguf.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise PipelineError("llama-cpp-python is not installed: `make bench-real` installs requirements-bench.txt "
                            "(it compiles llama.cpp, a few minutes)") from None


def converter_dir(cache: Path) -> Path:
    """llama.cpp's source tree of the installed llama-cpp-python (its converter, its `conversion`
    package and the gguf-py it writes with, newer than the registry's gguf of the same version
    number), from that version's source distribution on the package registry, cached."""
    version = llama_cpp_version()
    out = cache / f"llama.cpp-{version}"
    if (out / CONVERTER).is_file() and (out / "gguf-py").is_dir():
        return out
    with tempfile.TemporaryDirectory(prefix="llama-sdist-") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                               "-d", tmp, f"llama-cpp-python=={version}"], capture_output=True, text=True)
        archives = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode or not archives:
            raise PipelineError(f"could not fetch the llama-cpp-python {version} source for its converter:\n"
                                f"{done.stderr.strip()[-800:]}")
        prefix = f"{archives[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        packages = (prefix + "conversion/", prefix + "gguf-py/")
        with tarfile.open(archives[0]) as tar, atomic_path(out) as dst:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()
                       and (m.name == prefix + CONVERTER or m.name.startswith(packages))]
            for member in members:
                member.name = member.name.removeprefix(prefix)
                tar.extract(member, dst, filter="data")
    return out


def convert(hf_dir: Path, out: Path, cache: Path, outtype: str = "f16") -> None:
    """A Hugging Face checkpoint as one GGUF file (llama.cpp's converter, `outtype` weights)."""
    source = converter_dir(cache)
    with atomic_path(out) as tmp:
        done = subprocess.run([sys.executable, "-c", _PATCHED_MAIN, str(source), str(hf_dir), "--outfile", str(tmp),
                               "--outtype", outtype], capture_output=True, text=True)
        if done.returncode:
            raise PipelineError(f"llama.cpp's converter failed on {hf_dir}:\n{done.stderr.strip()[-1500:]}")


def quantize(src: Path, out: Path, file_type: str, threads: int) -> None:
    """llama.cpp's quantizer (llama-quantize), `file_type` one of FILE_TYPES."""
    import llama_cpp

    if file_type not in FILE_TYPES:
        raise PipelineError(f"GGUF file type {file_type!r}: expected one of {', '.join(FILE_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type]
    params.nthread = threads
    with atomic_path(out) as tmp:
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
            raise PipelineError(f"llama.cpp could not quantize {src} to {file_type}")


def tensor_bytes(path: Path) -> dict[str, int]:
    """Bytes of each tensor in a GGUF file."""
    from gguf import GGUFReader

    return {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}


def decode_bytes(path: Path) -> int:
    """Weight bytes one decode step reads: every tensor but the embedding table, of which a step
    reads one row, unless there is no output.weight (a tied embedding is then the lm_head too)."""
    sizes = tensor_bytes(path)
    tied = "output.weight" not in sizes
    return sum(n for name, n in sizes.items() if tied or name != "token_embd.weight")


class GgufModel:
    """One GGUF file in llama.cpp (CPU), greedy on token ids."""

    def __init__(self, path: Path, threads: int, context: int = 2048, all_logits: bool = False,
                 repack: bool = True):
        """`repack=False` turns off llama.cpp's CPU weight repacking (`use_extra_bufts`: AMX and
        AVX-512 layouts), which the Llama class does not expose: with it, every quantized type of
        SmolLM2-135M (width 576) crashed on the first eval here, while its f16 file ran."""
        from unittest import mock

        import llama_cpp.llama_cpp as api
        from llama_cpp import Llama

        def params():
            p = default()
            p.use_extra_bufts = repack
            return p

        default = api.llama_model_default_params
        self.folder = Path(path)
        with mock.patch.object(api, "llama_model_default_params", params):
            self.llm = Llama(str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads, n_batch=512,
                             logits_all=all_logits, verbose=False)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        if not self.llm._logits_all:
            raise PipelineError(f"{self.folder}: opened without all_logits; full-window logits need it")
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def logits_batch(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return [self.logits(ids) for ids in batch]

    def _steps(self, prompt: Sequence[int], new_tokens: int) -> Iterator[int | None]:
        """Yields None after the prefill, then each greedy token (at most `new_tokens`)."""
        self.llm.reset()
        self.llm.eval(list(prompt))
        yield None
        for _ in range(new_tokens):
            token = int(np.argmax(self._last_logits()))
            self.llm.eval([token])
            yield token

    def _last_logits(self) -> np.ndarray:
        """The last evaluated position's logits, read from llama.cpp's context (Llama.scores is
        only filled when every position's logits are kept)."""
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.llm._n_vocab,))

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int]) -> list[int]:
        steps = self._steps(prompt, max_new_tokens)
        next(steps)
        return take_until_stop(steps, max_new_tokens, stop_ids)

    def greedy_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop_ids: Sequence[int]) -> list[list[int]]:
        return [self.greedy(p, max_new_tokens, stop_ids) for p in prompts]

    def timed_decode(self, prompt: Sequence[int], new_tokens: int) -> tuple[float, list[float]]:
        return time_steps(self._steps(prompt, new_tokens), new_tokens)
