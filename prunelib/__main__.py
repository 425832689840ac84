"""Command line: `python -m prunelib eval|notebooks|book|report|compare|sensitivity|export|save ...`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from prunelib import distributed
from prunelib.allocation import ALLOCATORS, NEEDS_CALIBRATION
from prunelib.audio import AudioError
from prunelib.corpora import CorpusError
from prunelib.notebooks import ProfileRequirementError
from prunelib.paths import project_root


def _eval(args: argparse.Namespace) -> dict:
    """Evaluate one model on one corpus; the result is printed as the last line."""
    from prunelib.corpora import load_corpus
    from prunelib.evaluate import evaluate
    from prunelib.models import load_model
    from prunelib.transcribe import Decoding

    decoding = Decoding(language=args.language, batch_size=args.batch_size, num_beams=args.num_beams,
                        long_form=not args.truncate,
                        max_tokens_per_second=args.max_tokens_per_second if args.max_tokens_per_second != 0 else None)
    corpus = load_corpus(args.dataset, data_root=args.data_root, limit=args.limit)
    # Under torchrun / accelerate launch each rank takes its own GPU (cuda:LOCAL_RANK), else the CPU.
    loaded = load_model(args.model, device=distributed.rank_device(args.device))
    started = time.perf_counter()
    evaluation = evaluate(loaded, corpus, decoding, prune=args.prune, cache_dir=args.cache_dir)
    summary = dict(evaluation.summary)
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    summary["results_file"] = str(evaluation.path)
    summary["world_size"] = distributed.rank_info().world_size  # processes that shared the decoding
    n_failed = summary.get("n_failed", 0)
    if n_failed:
        failed = [r["id"] for r in evaluation.records if r.get("error")]
        logging.warning("%d utterance(s) could not be read and were skipped: %s", n_failed, ", ".join(failed))
    return summary


def _notebooks(args: argparse.Namespace) -> dict:
    """Run the numbered notebooks with a profile's parameters."""
    from prunelib.notebooks import run_notebooks

    executed = run_notebooks(args.profile, only=args.only, kernel=args.kernel)
    return {"profile": args.profile, "executed": [str(path) for path in executed]}


def _book(args: argparse.Namespace) -> dict:
    """Build the static HTML book from the committed executed notebooks."""
    from prunelib.book import build_book

    pages = build_book(args.out)
    return {"book": str(pages[0]), "pages": len(pages)}


def _report(args: argparse.Namespace) -> dict:
    """Re-render the README's results tables from a profile's summary tables (or only check them)."""
    from prunelib.report import update_readme

    changed = update_readme(args.readme, profile=args.profile, write=not args.check)
    if args.check and changed:
        raise ValueError(f"{args.readme}: tables {', '.join(changed)} differ from results/{args.profile}/summary/; "
                         "run `python -m prunelib report` to rewrite them")
    return {"readme": str(args.readme), "profile": args.profile, "changed": changed, "written": not args.check}


def _compare(args: argparse.Namespace) -> dict:
    """Say what moved between a revision's summary tables and those on disk; optionally write every change."""
    import pandas as pd

    from prunelib import compare
    from prunelib.results import write_csv_atomic

    compared = compare.compare_profile(args.profile, args.since)
    for line in compare.describe(compared):
        print(line)
    if args.out:
        every = [found.assign(table=name) for name, found in compared.items() if not found.empty]
        write_csv_atomic(args.out, pd.concat(every) if every else pd.DataFrame(columns=["table"]))
    return {"profile": args.profile, "since": args.since,
            "tables_changed": sum(not found.empty for found in compared.values()), "out": args.out}


def _sensitivity(args: argparse.Namespace) -> dict:
    """Score every component on N seeded calibration utterances and write them as CSV."""
    from prunelib import sensitivity
    from prunelib.calibration import seeded_order
    from prunelib.corpora import load_corpus
    from prunelib.models import load_model
    from prunelib.results import write_csv_atomic

    started = time.perf_counter()
    corpus = load_corpus(args.dataset, data_root=args.data_root)
    if args.n > len(corpus):
        raise ValueError(f"--n {args.n} asks for more calibration utterances than {args.dataset} has ({len(corpus)})")
    # Only the N drawn utterances are labelled, so pseudo labels never decode the whole corpus.
    corpus = corpus.subset(seeded_order(corpus, args.seed)[: args.n])
    loaded = load_model(args.model)
    table, _ = sensitivity.calibrate(loaded, corpus, labels=args.labels, seed=args.seed, batch_size=args.batch_size,
                                    chunk_size=args.chunk_size)
    methods = list(sensitivity.METHODS) if args.method == "all" else [args.method]
    columns = ["component", "stack", "layer", "kind", "numel", *methods]
    write_csv_atomic(args.out, table[columns])
    linear = sensitivity.prunable_rows(table).sort_values(methods[0], ascending=False)
    return {"model": args.model, "dataset": args.dataset, "n": int(table["size"].max()),
            "skipped": table.attrs["skipped"], "labels": args.labels, "seed": args.seed, "method": args.method,
            "mean_loss": round(float(table["mean_loss"].iloc[0]), 4), "components": len(table),
            "most_sensitive": linear["component"].iloc[0], "least_sensitive": linear["component"].iloc[-1],
            "out": args.out, "seconds": round(time.perf_counter() - started, 2)}


def _export(args: argparse.Namespace) -> dict:
    """Allocate a target sparsity, prune a copy of the model and save it with its sparsity report."""
    from prunelib import export, handoff
    from prunelib.corpora import load_corpus
    from prunelib.models import load_model

    if not 0 < args.target < 1:
        raise ValueError(f"--target must lie in (0, 1), got {args.target}")
    started = time.perf_counter()
    loaded = load_model(args.model)
    calibration = None
    if args.allocator in NEEDS_CALIBRATION:
        corpus = load_corpus(args.dataset, data_root=args.data_root)
        calibration = handoff.calibration_pool(corpus, args.split, args.calibration_speakers, args.seed)
    scores = None
    if args.allocator.startswith("sensitivity-"):
        if not args.scores:
            raise ValueError(f"{args.allocator} needs --scores (notebook 02's or `prunelib sensitivity`'s CSV)")
        scores = handoff.read_component_scores(args.scores, loaded.name)
    allocation, report = export.export_allocation(loaded, args.allocator, args.target, args.out,
                                                  calibration=calibration, scores=scores, seed=args.seed,
                                                  cap=args.cap)
    return {"model": args.model, "allocator": allocation.name, "target": args.target,
            "calibration_utterances": len(calibration) if calibration is not None else 0,
            "sparsity_linear": round(100 * report.overall_linear, 3),
            "sparsity": round(100 * report.overall_weights, 3), "out": args.out,
            "seconds": round(time.perf_counter() - started, 2)}


def _save(args: argparse.Namespace) -> dict:
    """Save a model as it loads (hub, hub cache or offline copy) as a plain Hugging Face folder."""
    from prunelib.models import load_model
    from prunelib.pruning import export_pruned

    loaded = load_model(args.model)
    out = export_pruned(loaded.model, loaded.processor, args.out, about={"model": loaded.name, "source": loaded.source})
    return {"model": args.model, "source": loaded.source, "out": str(out), "fingerprint": loaded.fingerprint}


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (so --limit -1 cannot quietly mean 'all but one')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m prunelib", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="transcribe and score one model on one corpus")
    ev.add_argument("--model", required=True, help="hub id (openai/whisper-base) or local folder")
    ev.add_argument("--dataset", required=True, help="NAME:SPLIT, e.g. librispeech:test-other")
    ev.add_argument("--prune", default="", help='prune spec, e.g. "decoder.self_attn=0.5" (default: dense)')
    ev.add_argument("--limit", type=_positive_int, default=None, help="first N utterances only")
    ev.add_argument("--language", default="en", help="'en' (standard: English forced) or 'auto' (the paper's)")
    ev.add_argument("--data-root", default=None, help="folder holding corpora (default: $PRUNELIB_DATA)")
    ev.add_argument("--batch-size", type=_positive_int, default=16)
    ev.add_argument("--num-beams", type=_positive_int, default=1, help="1 = greedy, as the paper")
    ev.add_argument("--truncate", action="store_true", help="cut audio at 30 s as the paper's code did")
    ev.add_argument("--max-tokens-per-second", type=float, default=10.0,
                    help="stop each utterance at this many tokens per second of its audio (0: no limit but 448)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--cache-dir", default=None, help="per-utterance results cache (default: results/cache)")
    ev.set_defaults(run=_eval)

    nb = sub.add_parser("notebooks", help="run the numbered notebooks with papermill")
    nb.add_argument("--profile", default="smoke",
                    help="smoke | smoke-base | default | default-tiny | paper (params/<profile>.yaml)")
    nb.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run, e.g. 01 02")
    nb.add_argument("--kernel", default=None, help="Jupyter kernel name (default: this Python)")
    nb.set_defaults(run=_notebooks)

    bk = sub.add_parser("book", help="build the HTML book of executed/default*/ (executes nothing)")
    bk.add_argument("--out", default="build/book", help="folder to write the site into (default: build/book)")
    bk.set_defaults(run=_book)

    rp = sub.add_parser("report", help="rewrite the README's results tables from a profile's summary tables")
    rp.add_argument("--profile", default="default", help="whose results/<profile>/summary/ to read (default: default)")
    rp.add_argument("--readme", default=str(project_root() / "README.md"), help="the file whose tables to rewrite")
    rp.add_argument("--check", action="store_true", help="change nothing; exit 2 if a table is out of date")
    rp.set_defaults(run=_report)

    cp = sub.add_parser("compare", help="what moved between a git revision's summary tables and those on disk")
    cp.add_argument("--since", required=True, help="git revision of the earlier tables, e.g. HEAD or a commit")
    cp.add_argument("--profile", default="default", help="whose results/<profile>/summary/ (default: default)")
    cp.add_argument("--out", default=None, help="CSV file of every changed cell (default: none)")
    cp.set_defaults(run=_compare)

    se = sub.add_parser("sensitivity", help="gradient / Fisher / Taylor / OBD scores per component, as CSV")
    se.add_argument("--model", required=True, help="hub id (openai/whisper-base) or local folder")
    se.add_argument("--dataset", required=True, help="calibration corpus NAME:SPLIT")
    se.add_argument("--n", type=_positive_int, default=32, help="calibration utterances, drawn by --seed")
    se.add_argument("--method", default="all", choices=["gradient", "fisher", "taylor", "obd", "all"])
    se.add_argument("--labels", default="reference", choices=["reference", "pseudo"],
                    help="sentence-cased references, or the model's own greedy transcripts")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--data-root", default=None, help="folder holding corpora (default: $PRUNELIB_DATA)")
    se.add_argument("--batch-size", type=_positive_int, default=16, help="decoding batch for pseudo labels")
    se.add_argument("--chunk-size", type=_positive_int, default=1,
                    help="per-sample gradients vmapped this many at a time (1: a backward each; see bench/FISHER.md)")
    se.add_argument("--out", required=True, help="CSV file of per-component scores")
    se.set_defaults(run=_sensitivity)

    ex = sub.add_parser("export", help="prune a copy of a model by one allocator at a target sparsity and save it")
    ex.add_argument("--model", required=True, help="hub id (openai/whisper-base) or local folder")
    ex.add_argument("--allocator", required=True, help=" | ".join(ALLOCATORS))
    ex.add_argument("--target", type=float, required=True, help="sparsity over the prunable linear weights, e.g. 0.4")
    ex.add_argument("--out", required=True, help="folder to save_pretrained into (replaced if present)")
    ex.add_argument("--dataset", default="librispeech:test-other",
                    help="calibration corpus NAME:SPLIT (" + ", ".join(NEEDS_CALIBRATION) + ")")
    ex.add_argument("--split", default=None,
                    help="notebook 02's 02_calibration.csv: calibrate on its utterances (default: draw speakers)")
    ex.add_argument(
        "--calibration-speakers", type=_positive_int, default=4, help="speakers drawn by --seed when no --split"
    )
    ex.add_argument("--scores", default=None, help="per-component scores CSV (sensitivity-fisher, -gradient)")
    ex.add_argument("--cap", type=float, default=0.7, help="no component beyond this (sensitivity allocators)")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--data-root", default=None, help="folder holding corpora (default: $PRUNELIB_DATA)")
    ex.set_defaults(run=_export)

    sv = sub.add_parser("save", help="save a model, dense, as a local folder that `--model PATH` and profiles load")
    sv.add_argument("--model", required=True, help="hub id (openai/whisper-base: the offline copy works) or folder")
    sv.add_argument("--out", required=True, help="new or empty folder (or an earlier prunelib export) to save into")
    sv.set_defaults(run=_save)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the subcommand, print its JSON result as the last line."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = args.run(args)
    except (CorpusError, AudioError, OSError, ValueError, ProfileRequirementError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Sharded runs merged their results already: rank 0 alone prints them.
    if distributed.is_main():
        print(json.dumps(result))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
