"""Benchmark per-sample gradients for the Fisher: one backward per utterance against torch.func.vmap chunks.

One job: on one model and the same calibration utterances, time `sensitivity.measure` with
`chunk_size` 1 (a Python loop of backward passes) and with each larger chunk (vmapped
`grad`), record peak memory, check that the per-sample sums agree, and write bench/FISHER.md.

Run from the repository root: `.venv/bin/python bench/fisher.py` (see bench/README.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout without installing prunelib
sys.path.insert(0, str(REPO / "bench"))

from run import common_arguments, machine, measured, mib  # noqa: E402

from prunelib import calibration, gradients  # noqa: E402
from prunelib.corpora import load_corpus  # noqa: E402
from prunelib.models import load_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = common_arguments(__doc__.split("\n\n")[0], "calibration utterances (first N)")
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=[4, 8], help="vmap chunk sizes to compare with the loop"
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "FISHER.md"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Time the loop and every chunk size, compare their sums, and write the report."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    facts = machine()
    loaded = load_model(args.model, device=args.device)
    corpus = load_corpus(args.dataset, data_root=args.data_root, limit=args.limit)
    examples, skipped = calibration.calibration_examples(
        loaded, corpus, calibration.label_texts(loaded, corpus, "reference")
    )
    if args.device == "cuda":
        examples = [calibration.Example(e.id, e.input_features.cuda(), e.decoder_input_ids.cuda(), e.labels.cuda())
                    for e in examples]
    gradients.measure_gradients(
        loaded.model, examples[:1], progress=False
    )  # warm-up: no run pays one-time initialisation

    rows, reference = [], None
    for chunk in [1, *args.chunks]:
        print(f"chunk_size {chunk}: {len(examples)} utterances", flush=True)
        with measured(args.device) as m:
            measurement = gradients.measure_gradients(loaded.model, examples, progress=False, chunk_size=chunk)
        sums = measurement.sq_sums.to_numpy()
        reference = sums if reference is None else reference
        rows.append({"chunk": chunk, "seconds": m["seconds"], "peak": m["peak"], "start": m["start"],
                     "max_rel_diff": float(np.max(np.abs(sums - reference) / np.maximum(np.abs(reference), 1e-30)))})

    loop = rows[0]["seconds"]
    lines = [
        "# Per-sample gradients: loop against torch.func.vmap", "",
        f"Command: `{' '.join(['python', 'bench/fisher.py', *(sys.argv[1:] if argv is None else argv)])}`", "",
        "## Machine", "", *[f"- {key}: {value}" for key, value in facts.items()], "",
        "## Setup", "",
        f"- model: {args.model} ({sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f} M parameters)",
        f"- calibration: {args.dataset}, first {args.limit} utterances ({len(examples)} used, {len(skipped)} skipped), "
        "reference labels",
        f"- device: {args.device}", "",
        "## Results", "",
        "| chunk_size | how | wall s | s / utterance | speed vs loop | peak memory (MiB) | at start (MiB) | "
        "max relative difference of sum g^2 vs loop |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        how = "one backward per utterance" if row["chunk"] == 1 else "vmap(grad), eager attention"
        lines.append(
            f"| {row['chunk']} | {how} | {row['seconds']:.2f} | {row['seconds'] / len(examples):.2f} | "
            f"{loop / row['seconds']:.2f} | {mib(row['peak'])} | {mib(row['start'])} | {row['max_rel_diff']:.1e} |"
        )
    lines += ["", "Peak memory: process RSS on CPU (sampled every 5 ms), `torch.cuda.max_memory_allocated` on CUDA. "
              "Memory grows with the chunk: each example in a chunk holds a full gradient and its own activations "
              "(with eager attention, every layer's attention matrix)."]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
