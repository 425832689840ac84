"""prunelib: sensitivity-aware one-shot pruning of Whisper, measured honestly.

Notebooks use `import prunelib as pl`; the names below are the public interface.
"""
from prunelib import (
    allocation,
    calibration,
    claims,
    export,
    gradients,
    handoff,
    plots,
    readings,
    reliability,
    sensitivity,
    sizes,
    sweep,
)
from prunelib.analysis import largest_differences, single_utterance_share, utterance_wer
from prunelib.audio import AudioError, read_audio
from prunelib.corpora import Corpus, CorpusError, Utterance, load_corpus
from prunelib.evaluate import Evaluation, evaluate
from prunelib.models import LoadedModel, ModelNotFoundError, load_model, weights_fingerprint
from prunelib.notebooks import check_parameters, output_dirs, resolve_data_root, set_seed, versions
from prunelib.paths import project_root, results_root
from prunelib.pruning import parse_prune_spec, prune_permanently, pruned, sparsity_report
from prunelib.results import read_jsonl, write_csv_atomic, write_jsonl_atomic
from prunelib.scoring import normalize_text, paired_difference, score
from prunelib.transcribe import Decoding, transcribe

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "Corpus",
    "CorpusError",
    "Decoding",
    "Evaluation",
    "LoadedModel",
    "ModelNotFoundError",
    "Utterance",
    "allocation",
    "calibration",
    "check_parameters",
    "claims",
    "export",
    "gradients",
    "handoff",
    "evaluate",
    "largest_differences",
    "load_corpus",
    "load_model",
    "normalize_text",
    "output_dirs",
    "plots",
    "paired_difference",
    "parse_prune_spec",
    "project_root",
    "prune_permanently",
    "pruned",
    "read_audio",
    "read_jsonl",
    "readings",
    "reliability",
    "resolve_data_root",
    "results_root",
    "score",
    "sensitivity",
    "set_seed",
    "single_utterance_share",
    "sizes",
    "sparsity_report",
    "sweep",
    "transcribe",
    "utterance_wer",
    "versions",
    "weights_fingerprint",
    "write_csv_atomic",
    "write_jsonl_atomic",
]
