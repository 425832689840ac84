"""Component naming: every tensor labelled once, from the module tree, on any layer layout."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_whisper_config
from torch import nn
from transformers import WhisperForConditionalGeneration, WhisperModel

from prunelib.components import component_table, layer_thirds, list_components, num_layers, third_of


def _linear_weight_names(model: nn.Module) -> list[str]:
    """Every nn.Linear weight by every name it is reachable under (tied ones twice)."""
    return [f"{name}.weight" if name else "weight"
            for name, module in model.named_modules(remove_duplicate=False)
            if isinstance(module, nn.Linear)]


def _check_every_linear_weight_once(model: nn.Module) -> None:
    infos = list_components(model)
    by_name = {}
    for info in infos:
        for name in (info.name, *info.aliases):
            assert name not in by_name, f"{name} listed twice"
            by_name[name] = info
    params = dict(model.named_parameters(remove_duplicate=False))
    assigned_ids = {}
    for name in _linear_weight_names(model):
        assert name in by_name, f"linear weight {name} has no component"
        # Each distinct tensor maps to exactly one entry, however many names reach it.
        assigned_ids.setdefault(id(params[name]), set()).add(by_name[name].name)
    assert all(len(entries) == 1 for entries in assigned_ids.values())
    assert len({info.name for info in infos}) == len(infos)
    assert sum(info.numel for info in infos) == sum(p.numel() for p in model.parameters())


def test_every_linear_weight_has_exactly_one_component(tiny_whisper):
    _check_every_linear_weight_once(tiny_whisper)


def test_tied_projection_listed_once_as_decoder_embed(tiny_whisper):
    infos = list_components(tiny_whisper)
    embeds = [info for info in infos if info.kind == "embed"]
    assert len(embeds) == 1
    (embed,) = embeds
    assert (embed.stack, embed.sub, embed.component) == ("decoder", "tokens", "decoder.embed")
    assert embed.aliases == ("proj_out.weight",)
    assert not embed.prunable
    assert not any(info.name.startswith("proj_out") for info in infos)


def test_untied_projection_is_still_the_embedding_component():
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_whisper_config(tie_word_embeddings=False))
    _check_every_linear_weight_once(model)
    embeds = {info.sub: info for info in list_components(model) if info.kind == "embed"}
    assert set(embeds) == {"tokens", "proj_out"}
    assert embeds["proj_out"].name == "proj_out.weight"


def test_cross_attention_always_labelled_decoder_cross_attn(tiny_whisper):
    infos = {info.name: info for info in list_components(tiny_whisper)}
    cross = [i for i in infos.values() if ".encoder_attn." in i.name and i.name.endswith("weight")]
    assert len(cross) == 2 * 4  # 2 decoder layers x q/k/v/out
    for info in cross:
        assert (info.stack, info.kind) == ("decoder", "cross_attn"), info
        assert info.sub in {"q", "k", "v", "out"}
        assert info.prunable
    assert {i.stack for i in infos.values() if i.kind == "cross_attn"} == {"decoder"}
    # The paper's substring bug: "encoder" in "encoder_attn" must not make it an encoder tensor.
    assert not any(i.stack == "encoder" for i in cross)


def test_labels_of_each_kind(tiny_whisper):
    infos = {info.name: info for info in list_components(tiny_whisper)}
    q = infos["model.encoder.layers.1.self_attn.q_proj.weight"]
    assert (q.stack, q.layer, q.kind, q.sub, q.prunable) == ("encoder", 1, "self_attn", "q", True)
    fc2 = infos["model.decoder.layers.0.fc2.weight"]
    assert (fc2.stack, fc2.layer, fc2.kind, fc2.sub, fc2.shape) == ("decoder", 0, "ffn", "fc2", (16, 32))
    conv = infos["model.encoder.conv1.weight"]
    assert (conv.kind, conv.layer, conv.prunable) == ("conv", None, False)
    bias = infos["model.decoder.layers.1.encoder_attn.v_proj.bias"]
    assert (bias.kind, bias.sub, bias.layer) == ("bias", "cross_attn.v", 1)
    ln = infos["model.decoder.layers.1.encoder_attn_layer_norm.weight"]
    assert (ln.kind, ln.sub) == ("layer_norm", "cross_attn")
    assert infos["model.decoder.embed_positions.weight"].kind == "embed_positions"
    assert infos["model.encoder.embed_positions.weight"].kind == "embed_positions"
    prunable = [i for i in infos.values() if i.prunable]
    # per encoder layer 4 attn + 2 ffn; per decoder layer 4 + 4 + 2
    assert len(prunable) == 2 * 6 + 2 * 10
    assert all(i.kind in {"self_attn", "cross_attn", "ffn"} for i in prunable)


@pytest.mark.parametrize("enc,dec", [(3, 5), (1, 4), (4, 1)])
def test_other_layer_counts(enc, dec):
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_whisper_config(encoder_layers=enc, decoder_layers=dec))
    _check_every_linear_weight_once(model)
    assert num_layers(model) == {"encoder": enc, "decoder": dec}
    table = component_table(model)
    layers = table[table["prunable"]].groupby("stack")["layer"].nunique().to_dict()
    assert layers == {"encoder": enc, "decoder": dec}
    assert set(table.loc[table["kind"] == "cross_attn", "stack"]) == {"decoder"}
    assert len(table[table["kind"] == "cross_attn"]) == 4 * dec


def test_bare_whisper_model_has_same_components(tiny_whisper):
    torch.manual_seed(0)
    bare = WhisperModel(tiny_whisper_config())
    _check_every_linear_weight_once(bare)
    wrapped = [(i.stack, i.layer, i.kind, i.sub) for i in list_components(tiny_whisper)]
    assert [(i.stack, i.layer, i.kind, i.sub) for i in list_components(bare)] == wrapped
    assert list_components(bare)[0].name == "encoder.conv1.weight"


def test_component_table_columns(tiny_whisper):
    table = component_table(tiny_whisper)
    for column in ("name", "stack", "layer", "kind", "sub", "shape", "numel", "prunable", "component"):
        assert column in table.columns
    assert table["name"].is_unique
    assert str(table["layer"].dtype) == "Int64"


def test_non_whisper_model_is_rejected():
    with pytest.raises(ValueError, match="no WhisperEncoder"):
        list_components(nn.Linear(2, 2))


@pytest.mark.parametrize("n_layers", range(2, 33))
def test_layer_thirds_partition_the_stack_in_order_and_agree_with_third_of(n_layers):
    thirds = layer_thirds(n_layers)
    assert list(thirds) == ["early", "middle", "late"]
    assert [layer for layers in thirds.values() for layer in layers] == list(range(n_layers))
    sizes = [len(layers) for layers in thirds.values()]
    assert max(sizes) - min(sizes) <= 1
    for name, layers in thirds.items():
        assert all(third_of(layer, n_layers) == name for layer in layers)


def test_layer_thirds_of_known_depths():
    # tiny.en (4 layers), base (6) and large (32): the cuts notebooks 02, 03 and 04 all use.
    assert {k: list(v) for k, v in layer_thirds(4).items()} == {"early": [0], "middle": [1, 2], "late": [3]}
    assert {k: list(v) for k, v in layer_thirds(6).items()} == {"early": [0, 1], "middle": [2, 3], "late": [4, 5]}
    assert third_of(21, 32) == "late" and third_of(20, 32) == "middle" and third_of(10, 32) == "early"
    with pytest.raises(ValueError, match="outside a stack of 4"):
        third_of(4, 4)
