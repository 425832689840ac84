"""Prune specs, exact one-shot masks, bit-exact restore, export round trip and sparsity reports."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_whisper_config
from transformers import WhisperForConditionalGeneration

from prunelib.components import list_components
from prunelib.pruning import (
    PruneItem,
    PruneSpec,
    compute_masks,
    export_pruned,
    is_export,
    parse_prune_spec,
    prune_permanently,
    pruned,
    resolve,
    sparsity_report,
)

ENC = "model.encoder.layers"
DEC = "model.decoder.layers"
EMBED = "model.decoder.embed_tokens.weight"


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _zeros(model: torch.nn.Module, name: str) -> int:
    return int((dict(model.named_parameters())[name] == 0).sum())


def _model(**overrides) -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(tiny_whisper_config(**overrides)).eval()


def _inputs(model: WhisperForConditionalGeneration) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, model.config.num_mel_bins, 100, generator=generator)
    tokens = torch.randint(3, model.config.vocab_size, (1, 7), generator=generator)
    return {"input_features": features, "decoder_input_ids": tokens}


# --- spec parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,items", [
    ("encoder.ffn=0.3", [("encoder.ffn", 0.3, False)]),
    ("decoder.ffn:local=0.3", [("decoder.ffn", 0.3, True)]),
    ("encoder.layers[-4:]=0.5", [("encoder.layers[-4:]", 0.5, False)]),
    ("encoder.layers[-4:].ffn=0.5", [("encoder.layers[-4:].ffn", 0.5, False)]),
    ("decoder.layers[1].self_attn=0.2", [("decoder.layers[1].self_attn", 0.2, False)]),
    ("encoder.layers[8:12]=0.1", [("encoder.layers[8:12]", 0.1, False)]),
    ("encoder.layers[ :2 ].self_attn:local = 0", [("encoder.layers[:2].self_attn", 0.0, True)]),
    (" global=0.5 ", [("global", 0.5, False)]),
    ("global+embed=.25", [("global+embed", 0.25, False)]),
    ("encoder.conv=0.1, decoder.embed=0.2,decoder.cross_attn:local=0.7",
     [("encoder.conv", 0.1, False), ("decoder.embed", 0.2, False), ("decoder.cross_attn", 0.7, True)]),
])
def test_parse_valid(text, items):
    spec = parse_prune_spec(text)
    assert spec == PruneSpec(tuple(PruneItem(*item) for item in items))
    assert parse_prune_spec(str(spec)) == spec
    assert str(parse_prune_spec(str(spec))) == str(spec)


def test_canonical_text():
    spec = parse_prune_spec(" encoder.layers[ -4 : ].ffn:local = 0.50 ,decoder=1e-1")
    assert str(spec) == "encoder.layers[-4:].ffn:local=0.5,decoder=0.1"


@pytest.mark.parametrize("text", ["", "none", "dense", " Dense "])
def test_parse_dense(text):
    spec = parse_prune_spec(text)
    assert spec == PruneSpec() and not spec and str(spec) == "dense"


@pytest.mark.parametrize("text,match", [
    ("encoder.mlp=0.3", "unknown selector 'encoder.mlp'.*valid selectors: global"),
    ("encoder.cross_attn=0.3", "unknown selector"),
    ("decoder.conv=0.3", "unknown selector"),
    ("encoder.layers[0].conv=0.3", "unknown selector"),
    ("encoder.layers[1:2:3]=0.3", "bad layer index"),
    ("encoder.layers[a]=0.3", "bad layer index"),
    ("encoder.ffn:pooled=0.3", "unknown selector"),
    ("encoder.ffn=1.0", r"outside \[0, 1\)"),
    ("encoder.ffn=1", r"outside \[0, 1\)"),
    ("encoder.ffn=-0.1", r"outside \[0, 1\)"),
    ("encoder.ffn=nan", r"outside \[0, 1\)"),
    ("encoder.ffn=abc", "not a number"),
    ("encoder.ffn", "malformed"),
    ("=0.3", "malformed"),
    ("encoder.ffn=0.3,", "malformed"),
    ("encoder.ffn=", "malformed"),
])
def test_parse_invalid(text, match):
    with pytest.raises(ValueError, match=match):
        parse_prune_spec(text)


# --- resolution ---------------------------------------------------------------------------------

def test_resolve_selectors(tiny_whisper):
    def names(text):
        ((_, selected),) = resolve(text, tiny_whisper)
        return selected

    assert names("encoder.layers[-1:].ffn=0.1") == [f"{ENC}.1.fc1.weight", f"{ENC}.1.fc2.weight"]
    assert names("encoder.layers[-1].ffn=0.1") == names("encoder.layers[1].ffn=0.1")
    assert sorted(names("decoder.layers[0].self_attn=0.1")) == sorted(
        f"{DEC}.0.self_attn.{p}_proj.weight" for p in ("q", "k", "v", "out"))
    assert len(names("decoder.layers[0]=0.1")) == 4 + 4 + 2
    assert len(names("encoder.layers[0:1]=0.1")) == 4 + 2
    assert all(".encoder_attn." in n for n in names("decoder.cross_attn=0.1"))
    assert len(names("decoder.cross_attn=0.1")) == 8
    assert names("encoder.conv=0.1") == ["model.encoder.conv1.weight", "model.encoder.conv2.weight"]
    assert names("decoder.embed=0.1") == [EMBED]
    assert len(names("encoder=0.1")) == 2 * 6 and len(names("decoder=0.1")) == 2 * 10


def test_global_excludes_tied_embedding_and_global_embed_includes_it(tiny_whisper):
    ((_, plain),) = resolve("global=0.5", tiny_whisper)
    ((_, with_embed),) = resolve("global+embed=0.5", tiny_whisper)
    prunable = [info.name for info in list_components(tiny_whisper) if info.prunable]
    assert plain == prunable and EMBED not in plain
    assert set(with_embed) == set(plain) | {EMBED}
    padding_zeros = _zeros(tiny_whisper, EMBED)  # the pad token's row starts at zero
    with pruned(tiny_whisper, "global=0.5"):
        assert _zeros(tiny_whisper, EMBED) == padding_zeros
    with pruned(tiny_whisper, "global+embed=0.5"):
        assert _zeros(tiny_whisper, EMBED) > padding_zeros + 100
        # proj_out is the same tensor, so the output projection is pruned with it.
        assert int((tiny_whisper.proj_out.weight == 0).sum()) == _zeros(tiny_whisper, EMBED)
    # global and the embedding are disjoint, so they may be combined in one spec.
    assert len(resolve("global=0.5,decoder.embed=0.1", tiny_whisper)) == 2


def test_empty_selection_names_layer_count():
    model = _model(encoder_layers=6)
    with pytest.raises(ValueError, match="selects no tensors.*6 encoder layers"):
        resolve("encoder.layers[3:3]=0.5", model)
    assert len(resolve("encoder.layers[-6]=0.5", model)[0][1]) == 6


@pytest.mark.parametrize("selector", ["encoder.layers[2:10]", "encoder.layers[10:12]", "encoder.layers[6].ffn",
                                      "encoder.layers[-7:]", "encoder.layers[-7]"])
def test_layer_ranges_past_the_stack_are_refused_not_clamped(selector):
    # Python would clamp [2:10] to [2:6] while every label kept saying [2:10].
    with pytest.raises(ValueError, match=r"reaches past the 6 encoder layers"):
        resolve(f"{selector}=0.5", _model(encoder_layers=6))


def test_layer_ranges_that_fit_exactly_are_accepted():
    model = _model(encoder_layers=4)
    assert resolve("encoder.layers[-4:]=0.5", model)[0][1] == resolve("encoder.layers[0:4]=0.5", model)[0][1]
    assert len(resolve("encoder.layers[:4].ffn=0.5", model)[0][1]) == 8


def test_duplicate_tensor_is_rejected(tiny_whisper):
    with pytest.raises(ValueError, match="selected by both 'encoder=0.1' and 'encoder.ffn=0.2'"):
        resolve("encoder=0.1,encoder.ffn=0.2", tiny_whisper)
    with pytest.raises(ValueError, match="selected by both"):
        resolve("global=0.1,decoder.layers[-1:].cross_attn=0.2", tiny_whisper)
    with pytest.raises(ValueError, match="selected by both"):
        compute_masks(tiny_whisper, "decoder.embed=0.1,global+embed=0.2")


# --- exact sparsity -----------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.333, 0.5, 0.77, 0.99])
def test_local_sparsity_exact_per_matrix(tiny_whisper, sparsity):
    ((_, names),) = resolve("global=0.1", tiny_whisper)
    assert all(_zeros(tiny_whisper, n) == 0 for n in names)
    params = dict(tiny_whisper.named_parameters())
    with pruned(tiny_whisper, f"global:local={sparsity}") as report:
        for name in names:
            assert _zeros(tiny_whisper, name) == round(sparsity * params[name].numel())
        assert abs(report.items[0]["achieved"] - sparsity) <= 1 / 512


@pytest.mark.parametrize("spec", ["global=0.333", "encoder.ffn=0.5", "decoder.layers[-1:]=0.9",
                                  "encoder.conv=0.123", "decoder.embed=0.4"])
def test_pooled_sparsity_exact_per_group(tiny_whisper, spec):
    ((item, names),) = resolve(spec, tiny_whisper)
    params = dict(tiny_whisper.named_parameters())
    total = sum(params[n].numel() for n in names)
    # Zeros already there (the embedding's pad row) are the smallest, so they count towards k.
    assert sum(_zeros(tiny_whisper, n) for n in names) <= round(item.sparsity * total)
    with pruned(tiny_whisper, spec) as report:
        assert sum(_zeros(tiny_whisper, n) for n in names) == round(item.sparsity * total)
        assert report.items[0]["numel"] == total


def test_pooled_pruning_really_pools(tiny_whisper):
    small = f"{ENC}.0.fc1.weight"
    params = dict(tiny_whisper.named_parameters())
    with torch.no_grad():
        # Every fc1 weight of layer 0 is smaller in magnitude than every other FFN weight.
        for name in (f"{ENC}.{i}.{fc}.weight" for i in (0, 1) for fc in ("fc1", "fc2")):
            params[name].copy_(torch.sign(params[name]) * (1 + params[name].abs()))
        params[small].mul_(0.1)
    # fc1 of layer 0 is exactly a quarter of encoder.ffn and holds all of its smallest weights.
    with pruned(tiny_whisper, "encoder.ffn=0.25"):
        assert _zeros(tiny_whisper, small) == 512
        for other in (f"{ENC}.0.fc2.weight", f"{ENC}.1.fc1.weight", f"{ENC}.1.fc2.weight"):
            assert _zeros(tiny_whisper, other) == 0
    with pruned(tiny_whisper, "encoder.ffn:local=0.25"):
        for name in (small, f"{ENC}.0.fc2.weight", f"{ENC}.1.fc1.weight", f"{ENC}.1.fc2.weight"):
            assert _zeros(tiny_whisper, name) == 128


def test_magnitude_prunes_smallest(tiny_whisper):
    name = f"{DEC}.1.fc2.weight"
    weight = dict(tiny_whisper.named_parameters())[name].detach().clone()
    keep = compute_masks(tiny_whisper, "decoder.layers[1].ffn:local=0.4")[name]
    assert weight.abs()[~keep].max() <= weight.abs()[keep].min()


def test_importance_changes_which_weights_are_pruned(tiny_whisper):
    spec = "decoder.ffn=0.5"
    ((_, names),) = resolve(spec, tiny_whisper)
    params = dict(tiny_whisper.named_parameters())
    generator = torch.Generator().manual_seed(3)
    importance = {n: torch.rand(params[n].shape, generator=generator) for n in names}
    by_magnitude = compute_masks(tiny_whisper, spec)
    by_score = compute_masks(tiny_whisper, spec, importance)
    assert any(not torch.equal(by_magnitude[n], by_score[n]) for n in names)
    pruned_scores = torch.cat([importance[n][~by_score[n]] for n in names])
    kept_scores = torch.cat([importance[n][by_score[n]] for n in names])
    assert pruned_scores.max() < kept_scores.min()
    # Inverting the scores prunes the largest weights instead of the smallest.
    inverse = {n: -params[n].detach().abs() for n in names}
    masks = compute_masks(tiny_whisper, spec, inverse)
    assert all(torch.equal(masks[n], ~by_magnitude[n]) for n in names)
    # Applying with importance zeroes exactly the low-score weights.
    with pruned(tiny_whisper, spec, importance):
        for n in names:
            assert torch.equal(params[n] == 0, ~by_score[n])


def test_importance_is_checked(tiny_whisper):
    with pytest.raises(ValueError, match="no scores"):
        compute_masks(tiny_whisper, "decoder.ffn=0.5", {})
    ((_, names),) = resolve("encoder.layers[0].ffn=0.5", tiny_whisper)
    with pytest.raises(ValueError, match="shape"):
        compute_masks(tiny_whisper, "encoder.layers[0].ffn=0.5", {n: torch.zeros(3) for n in names})


def test_ties_are_exact_and_deterministic(tiny_whisper):
    spec = "encoder.ffn=0.3"
    ((_, names),) = resolve(spec, tiny_whisper)
    params = dict(tiny_whisper.named_parameters())
    flat = {n: torch.ones_like(params[n]) for n in names}
    first = compute_masks(tiny_whisper, spec, flat)
    second = compute_masks(tiny_whisper, spec, flat)
    total = sum(params[n].numel() for n in names)
    assert sum(int((~m).sum()) for m in first.values()) == round(0.3 * total)
    assert all(torch.equal(first[n], second[n]) for n in names)
    # Ties go to earlier tensors and earlier flat positions.
    flat_pruned = torch.cat([(~first[n]).reshape(-1) for n in names])
    assert flat_pruned[:round(0.3 * total)].all() and not flat_pruned[round(0.3 * total):].any()


# --- in-place application and restore -----------------------------------------------------------

def test_restore_is_bit_exact(tiny_whisper):
    before = _state_hash(tiny_whisper)
    ids = {n: id(p) for n, p in tiny_whisper.named_parameters()}
    inputs = _inputs(tiny_whisper)
    with torch.no_grad():
        dense_logits = tiny_whisper(**inputs).logits
    with pruned(tiny_whisper, "global+embed=0.6,encoder.conv:local=0.3") as report:
        assert _state_hash(tiny_whisper) != before
        assert report.items[0]["achieved"] == pytest.approx(0.6, abs=1e-3)
        # In place: same Parameter objects, no torch prune reparametrisation.
        assert {n: id(p) for n, p in tiny_whisper.named_parameters()} == ids
        assert not any(n.endswith("_orig") for n, _ in tiny_whisper.named_parameters())
        with torch.no_grad():
            assert not torch.equal(tiny_whisper(**inputs).logits, dense_logits)
    assert _state_hash(tiny_whisper) == before
    with torch.no_grad():
        assert torch.equal(tiny_whisper(**inputs).logits, dense_logits)


def test_restore_after_exception(tiny_whisper):
    before = _state_hash(tiny_whisper)
    with pytest.raises(RuntimeError, match="boom"):
        with pruned(tiny_whisper, "decoder.cross_attn:local=0.5,encoder=0.2"):
            assert _state_hash(tiny_whisper) != before
            raise RuntimeError("boom")
    assert _state_hash(tiny_whisper) == before


def test_bad_spec_leaves_model_untouched(tiny_whisper):
    before = _state_hash(tiny_whisper)
    with pytest.raises(ValueError):
        with pruned(tiny_whisper, "encoder=0.3,encoder.ffn=0.1"):
            pass
    assert _state_hash(tiny_whisper) == before


def test_dense_spec_is_a_no_op(tiny_whisper):
    before = _state_hash(tiny_whisper)
    with pruned(tiny_whisper, "dense") as report:
        assert report.overall_linear == 0.0 and report.items == []
    with pruned(tiny_whisper, "global=0.0"):
        assert _state_hash(tiny_whisper) == before


# --- permanent pruning, export and reports --------------------------------------------------------

def test_export_reload_round_trip(tiny_whisper, tmp_path):
    report = prune_permanently(tiny_whisper, "global=0.5,decoder.embed=0.3")
    assert report.overall_linear == pytest.approx(0.5, abs=1e-3)
    out = export_pruned(tiny_whisper, None, tmp_path / "export", report)
    reloaded = WhisperForConditionalGeneration.from_pretrained(out).eval()
    assert reloaded.proj_out.weight is reloaded.model.decoder.embed_tokens.weight
    original = tiny_whisper.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    inputs = _inputs(tiny_whisper)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, tiny_whisper(**inputs).logits)
    saved = json.loads((out / "sparsity_report.json").read_text())
    assert saved["spec"] == "global=0.5,decoder.embed=0.3"
    assert saved["overall_linear"] == report.overall_linear
    assert sparsity_report(reloaded).overall_weights == pytest.approx(report.overall_weights)


def test_export_replaces_an_earlier_export_and_leaves_no_partial_folder(tiny_whisper, tmp_path):
    out = export_pruned(tiny_whisper, None, tmp_path / "export")
    (out / "stale.txt").write_text("from an older export")
    export_pruned(tiny_whisper, None, out)
    assert not (out / "stale.txt").exists()
    assert (out / "sparsity_report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(tiny_whisper, tmp_path):
    (tmp_path / "notes.txt").write_text("someone's work")
    with pytest.raises(ValueError, match="not an earlier prunelib export"):
        export_pruned(tiny_whisper, None, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "someone's work"
    # A folder that merely holds a file of the same name as ours is somebody else's too.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sparsity_report.json").write_text("{}")
    with pytest.raises(ValueError, match="not an earlier prunelib export"):
        export_pruned(tiny_whisper, None, theirs)
    assert sorted(p.name for p in theirs.iterdir()) == ["sparsity_report.json"]


def test_export_never_touches_a_users_folder_beside_it(tiny_whisper, tmp_path):
    # The old export staged into "<out>.partial" and deleted whatever was there first.
    mine = tmp_path / "export.partial"
    mine.mkdir()
    (mine / "draft.txt").write_text("keep me")
    out = export_pruned(tiny_whisper, None, tmp_path / "export")
    export_pruned(tiny_whisper, None, out)
    assert (mine / "draft.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export.partial"]
    assert is_export(out) and not is_export(mine)


def test_export_into_an_empty_folder(tiny_whisper, tmp_path):
    (tmp_path / "empty").mkdir()
    assert is_export(export_pruned(tiny_whisper, None, tmp_path / "empty"))


def test_paper_denominator_counts_tied_tensor_once(tiny_whisper):
    report = prune_permanently(tiny_whisper, "decoder.embed=0.5")
    unique = {n: p for n, p in tiny_whisper.named_parameters() if "weight" in n}
    zeros = sum(int((p == 0).sum()) for p in unique.values())
    numel = sum(p.numel() for p in unique.values())
    assert report.overall_weights == pytest.approx(zeros / numel)
    # Counting proj_out as well (as a naive named_parameters(remove_duplicate=False) would) differs.
    doubled = {n: p for n, p in tiny_whisper.named_parameters(remove_duplicate=False) if "weight" in n}
    assert len(doubled) == len(unique) + 1
    assert sum(p.numel() for p in doubled.values()) != numel
    assert report.overall_linear == 0.0


def test_report_contents(tiny_whisper):
    with pruned(tiny_whisper, "encoder.layers[-1:]:local=0.5,decoder.cross_attn=0.25") as report:
        table = report.tensors
        assert table["name"].is_unique
        row = table.set_index("name").loc[f"{ENC}.1.fc1.weight"]
        assert row["zeros"] == 256 and row["sparsity"] == 0.5
        assert row["selected_by"] == "encoder.layers[-1:]:local=0.5"
        components = report.components
        enc1 = components[(components["stack"] == "encoder") & (components["layer"] == 1)]
        assert set(enc1["kind"]) == {"self_attn", "ffn"}
        assert (enc1["sparsity"] == 0.5).all()
        assert [item["requested"] for item in report.items] == [0.5, 0.25]
        assert report.items[1]["achieved"] == 0.25
        text = report.summary()
        assert "decoder.cross_attn=0.25" in text and "prunable linear" in text
        assert json.loads(json.dumps(report.to_dict()))["items"][0]["item"] == "encoder.layers[-1:]:local=0.5"


def test_a_failed_replacement_puts_the_earlier_export_back(tiny_whisper, tmp_path, monkeypatch):
    out = export_pruned(tiny_whisper, None, tmp_path / "export")
    real_rename = Path.rename

    def failing(self, target):
        if self.name.startswith(".export.export-"):
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="disk full"):
        export_pruned(tiny_whisper, None, out)
    monkeypatch.undo()
    assert is_export(out) and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
