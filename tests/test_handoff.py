"""The files notebooks hand each other: split, scores and exports, read back as they were written."""
import pandas as pd
import pytest

from prunelib import handoff
from prunelib.corpora import load_corpus
from prunelib.pruning import export_pruned


@pytest.fixture
def librivox(shared_data):
    return load_corpus("librivox-mini:test", data_root=shared_data)


def test_calibration_pool_reads_the_split_file(librivox, tmp_path):
    ids = [u.id for u in librivox.utterances]
    split = tmp_path / "02_calibration.csv"
    pd.DataFrame({"id": ids, "dataset": librivox.name,
                  "role": ["calibration", "calibration", "evaluation", "evaluation", "evaluation"]}).to_csv(split)
    assert [u.id for u in handoff.calibration_pool(librivox, split).utterances] == ids[:2]


def test_calibration_pool_rejects_another_corpus_split(librivox, tmp_path):
    split = tmp_path / "02_calibration.csv"
    pd.DataFrame({"id": ["a"], "dataset": ["earnings22:test"], "role": ["calibration"]}).to_csv(split)
    with pytest.raises(ValueError, match="earnings22:test, not librivox-mini:test"):
        handoff.calibration_pool(librivox, split)


def test_component_scores_keep_one_model_and_the_largest_size(tmp_path):
    rows = [{"model": model, "component": f"decoder.layers[{layer}].ffn", "stack": "decoder", "layer": layer,
             "kind": "ffn", "numel": 10, "labels": "reference", "seed": 0, "size": size, "fisher": size + layer}
            for model in ("a", "b") for layer in (0, 1) for size in (4, 8)]
    rows.append({**rows[0], "component": "decoder.embed", "layer": None, "kind": "embed"})
    path = tmp_path / "scores.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = handoff.read_component_scores(path, "b")
    assert list(table.index) == ["decoder.layers[0].ffn", "decoder.layers[1].ffn"]
    assert table["fisher"].tolist() == [8, 9]
    with pytest.raises(ValueError, match=r"no per-layer component scores \(model c"):
        handoff.read_component_scores(path, "c")


def _split_file(summaries, corpus, roles, seed=3):
    table = pd.DataFrame({"id": [u.id for u in corpus.utterances], "speaker": None, "role": roles,
                          "used_for_calibration": [r == "calibration" for r in roles]})
    handoff.write_summary(summaries, handoff.CALIBRATION, table.assign(dataset=corpus.name, seed=seed))


def test_calibration_split_is_read_when_it_splits_this_corpus(librivox, tmp_path):
    _split_file(tmp_path, librivox, ["calibration", "evaluation", "calibration", "evaluation", "evaluation"])
    split = handoff.calibration_split(tmp_path, librivox, n_speakers=1, seed=0)
    ids = [u.id for u in librivox.utterances]
    assert split.from_file and split.seed == 3 and split.source.startswith("read from")
    assert [u.id for u in split.pool.utterances] == [ids[0], ids[2]]
    assert [u.id for u in split.held_out.utterances] == [ids[1], ids[3], ids[4]]
    assert handoff.calibration_ids(tmp_path) == {ids[0], ids[2]}


def test_calibration_ids_hold_the_whole_pool_even_what_gradients_skip(librivox, tmp_path):
    ids = [u.id for u in librivox.utterances]
    table = pd.DataFrame({"id": ids, "speaker": None, "role": ["calibration"] * 2 + ["evaluation"] * 3,
                          "used_for_calibration": [True, False, False, False, False]})  # ids[1]: over 30 s, say
    handoff.write_summary(tmp_path, handoff.CALIBRATION, table.assign(dataset=librivox.name, seed=0))
    assert handoff.calibration_ids(tmp_path) == {ids[0], ids[1]}


def test_calibration_split_of_other_utterances_is_drawn_anew(librivox, tmp_path):
    fewer = librivox.subset([u.id for u in librivox.utterances][:3])
    _split_file(tmp_path, fewer, ["calibration", "evaluation", "evaluation"])
    split = handoff.calibration_split(tmp_path, librivox, n_speakers=2, seed=0)
    assert not split.from_file and split.seed == 0 and len(split.pool) == 2 and len(split.held_out) == 3


def test_exports_are_found_by_their_marker_not_their_name(tiny_whisper, tmp_path, monkeypatch):
    monkeypatch.setattr(handoff, "exports_dir", lambda profile: tmp_path / profile)
    folder = handoff.export_folder("p", "random (seed 1)", 0.4)
    assert folder.name == "04_random_seed_1_40"
    assert handoff.export_folder("p", "sparsegpt+empirical", 0.4).name == "04_sparsegpt_empirical_40"
    assert handoff.find_export("p", 0.4) is None
    export_pruned(tiny_whisper, None, folder, about={"allocator": "random (seed 1)", "target": 0.4, "model": "m"})
    export_pruned(tiny_whisper, None, tmp_path / "p" / "04_other_20",
                  about={"allocator": "uniform", "target": 0.2, "model": "m"})
    export_pruned(tiny_whisper, None, tmp_path / "p" / "04_paper", about={"allocator": "paper", "target": None})
    (tmp_path / "p" / "04_stray_40").mkdir()  # no marker: not an export, whatever its name says
    assert handoff.find_export("p", 0.4) == ("random (seed 1)", folder)
    assert handoff.find_export("p", 0.2)[0] == "uniform"
    assert handoff.find_export("p", 0.4, model="m") == ("random (seed 1)", folder)
    assert handoff.find_export("p", 0.4, model="another model") is None  # another model's export is not this one's
