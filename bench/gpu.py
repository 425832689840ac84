"""Five minutes on a GPU: prunelib's evaluator at fp32, bf16 and fp16, SparseGPT's calibration, faster-whisper.

One job: on a CUDA device, time (with synchronisation) the dense evaluator's RTFx for one model
at three dtypes with the transcripts and WER of each against fp32, SparseGPT's calibration of
one allocation, and faster-whisper on the same CTranslate2 weights when it is importable and a
checkpoint is at hand; write the results file. Run through bench/gpu.sh.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import floors  # noqa: E402
from run import REPO, common_arguments, faster_whisper_dir, machine, run_faster_whisper  # noqa: E402

from prunelib import allocation, scoring  # noqa: E402
from prunelib.calibration import split_calibration  # noqa: E402
from prunelib.corpora import Corpus, load_corpus  # noqa: E402
from prunelib.models import load_model  # noqa: E402
from prunelib.transcribe import Decoding, transcribe  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(run, repeats: int = 2) -> tuple[object, float]:
    """The result of `run` and floors.best_seconds of it (one warm-up, fastest of `repeats`, synchronised)."""
    kept = {}

    def call() -> None:
        kept["result"] = run()

    seconds = floors.best_seconds(call, repeats, "cuda")
    return kept["result"], seconds


def main(argv: list[str] | None = None) -> int:
    """Measure every part, keep going past a failing one, write the report; exit 1 if any part failed."""
    parser = common_arguments(__doc__.split("\n\n")[0], "utterances (first N)", model="openai/whisper-base",
                              limit=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--calibration", type=int, default=16, help="SparseGPT calibration utterances")
    parser.add_argument("--out", default=str(REPO / "bench" / "GPU.md"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device: torch sees none")
    transformers.logging.set_verbosity_error()
    facts = machine()
    command = " ".join(["python", "bench/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    lines = ["# GPU benchmark", "", f"Command: `{command}`", "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    failed = []
    loaded = load_model(args.model, device="cuda")
    corpus = load_corpus(args.dataset, data_root=args.data_root, limit=args.limit)
    utterances = [dataclasses.replace(u, audio_array=u.load_audio()) for u in corpus.utterances]
    corpus = Corpus(name=corpus.name, utterances=utterances, source=corpus.source)
    audio_seconds = sum(len(u.audio_array) for u in utterances) / 16_000
    decoding = Decoding(batch_size=args.batch_size)
    lines += ["", "## Setup", "", f"- model: {args.model} ({loaded.source})",
              f"- audio: {corpus.name}, first {len(utterances)} utterances, {audio_seconds:.1f} s",
              f"- decoding: greedy, batch {args.batch_size}, token budget {decoding.max_tokens_per_second} tokens/s",
              "", "## prunelib's dense evaluator by dtype", "",
              "| dtype | wall s | RTFx | WER | transcripts differing from fp32 |", "|---|---:|---:|---:|---:|"]
    reference = None
    for name, dtype in DTYPES.items():
        try:
            variant = loaded if dtype == torch.float32 else dataclasses.replace(
                loaded, model=copy.deepcopy(loaded.model).to(dtype))
            records, seconds = timed(lambda variant=variant: transcribe(variant, utterances, decoding, progress=False))
            texts = [r["hypothesis"] for r in records]
            reference = texts if reference is None else reference
            differing = sum(a != b for a, b in zip(texts, reference, strict=True))
            lines.append(f"| {name} | {seconds:.2f} | {audio_seconds / seconds:.1f} | "
                         f"{scoring.score(records, n_boot=100)['wer']:.2f} | {differing} of {len(texts)} |")
            if variant is not loaded:
                del variant
                torch.cuda.empty_cache()
        except Exception as err:  # report and go on: the other parts still mean something
            failed.append(f"{name}: {type(err).__name__}: {err}")
            lines.append(f"| {name} | failed: {type(err).__name__}: {err} | | | |")
            traceback.print_exc()

    lines += ["", "## SparseGPT calibration", ""]
    try:
        pool, _ = split_calibration(load_corpus(args.dataset, data_root=args.data_root), 4, 0)
        calibration = pool.subset([u.id for u in pool.utterances[:args.calibration]])
        examples, skipped = allocation.reference_examples(loaded, calibration)
        examples = [dataclasses.replace(e, input_features=e.input_features.cuda(),
                                        decoder_input_ids=e.decoder_input_ids.cuda(), labels=e.labels.cuda())
                    for e in examples]
        torch.cuda.synchronize()
        started = time.perf_counter()
        allocation.allocate("sparsegpt", loaded.model, 0.4, examples=examples)
        torch.cuda.synchronize()
        lines.append(f"- sparsegpt at 40 % (uniform per matrix), {len(examples)} calibration utterances "
                     f"({len(skipped)} skipped): {time.perf_counter() - started:.1f} s")
    except Exception as err:
        failed.append(f"sparsegpt: {type(err).__name__}: {err}")
        lines.append(f"- failed: {type(err).__name__}: {err}")
        traceback.print_exc()

    lines += ["", "## faster-whisper on the same CTranslate2 weights", ""]
    try:
        import faster_whisper  # noqa: F401  (an outside reference only: never a dependency)

        with tempfile.TemporaryDirectory() as workdir:
            folder = faster_whisper_dir(args.model, Path(workdir))
            if folder is None:
                lines.append(f"- skipped: no CTranslate2 checkpoint of {args.model} is installed")
            else:
                run = run_faster_whisper(folder, [u.audio_array for u in utterances], "cuda",
                                         english_only=not loaded.is_multilingual)
                _, seconds = timed(run)
                lines.append(f"- float32, greedy, one utterance at a time: {seconds:.2f} s, RTFx "
                             f"{audio_seconds / seconds:.1f}")
    except ImportError:
        lines.append("- skipped: faster_whisper is not installed")
    except Exception as err:
        failed.append(f"faster-whisper: {type(err).__name__}: {err}")
        lines.append(f"- failed: {type(err).__name__}: {err}")
    if failed:
        lines += ["", "## Failed parts", ""] + [f"- {line}" for line in failed]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
