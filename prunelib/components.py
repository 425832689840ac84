"""Name every parameter tensor of a Whisper model by component, read from the module tree.

Labels come from each tensor's position under the located ``WhisperEncoder`` /
``WhisperDecoder`` module, never from substrings of its name: substring matching
is how the paper's code ended up calling decoder cross-attention "encoder".
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder

STACKS = ("encoder", "decoder")
KINDS = ("self_attn", "cross_attn", "ffn", "conv", "embed", "embed_positions", "layer_norm", "bias")
LINEAR_KINDS = ("self_attn", "cross_attn", "ffn")
THIRDS = ("early", "middle", "late")

_ATTENTION = {"self_attn": "self_attn", "encoder_attn": "cross_attn"}
_PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "out"}
# A layer's LayerNorms are labelled by the block they normalise the input of (pre-LN).
_LAYER_NORMS = {
    "self_attn_layer_norm": "self_attn",
    "encoder_attn_layer_norm": "cross_attn",
    "final_layer_norm": "ffn",
}
_STACK_MODULES = {"conv1": ("conv", "conv1"), "conv2": ("conv", "conv2"),
                  "embed_tokens": ("embed", "tokens"),
                  "embed_positions": ("embed_positions", "positions"),
                  "layer_norm": ("layer_norm", "final")}


def layer_thirds(n_layers: int) -> dict[str, range]:
    """The early, middle and late third of a stack of `n_layers` layers, as layer ranges.

    Cut at round(n * k / 3), so the thirds differ in size by at most one and the middle one is
    the odd one out (4 layers: [0], [1, 2], [3]; 32 layers: 0-10, 11-20, 21-31). With fewer than
    three layers some thirds are empty. The one definition that notebooks 02, 03 and 04 share.
    """
    if n_layers < 1:
        raise ValueError(f"a stack needs at least one layer, got {n_layers}")
    bounds = [round(n_layers * k / 3) for k in range(4)]
    return {name: range(bounds[i], bounds[i + 1]) for i, name in enumerate(THIRDS)}


def layers_selector(stack: str, layers: range) -> str:
    """A layer range as prune-spec selector text: ``decoder.layers[2:4]``."""
    return f"{stack}.layers[{layers.start}:{layers.stop}]"


def third_of(layer: int, n_layers: int) -> str:
    """Which third ('early', 'middle', 'late') of a stack of `n_layers` layer `layer` lies in."""
    for name, layers in layer_thirds(n_layers).items():
        if layer in layers:
            return name
    raise ValueError(f"layer {layer} is outside a stack of {n_layers} layers")


@dataclass(frozen=True)
class TensorInfo:
    """One parameter tensor and the component it belongs to."""

    name: str  # qualified name as yielded by model.named_parameters()
    stack: str  # "encoder" or "decoder"
    layer: int | None  # None for tensors outside the layer stack
    kind: str  # one of KINDS
    sub: str  # q/k/v/out, fc1/fc2, conv1/conv2, tokens, ...; owner "kind.sub" for biases
    shape: tuple[int, ...]
    numel: int
    prunable: bool  # an nn.Linear weight inside an encoder/decoder layer
    aliases: tuple[str, ...] = ()  # other names of the same tensor (tied proj_out)

    @property
    def component(self) -> str:
        """Component label such as ``decoder.layers[3].cross_attn`` or ``encoder.conv``."""
        where = self.stack if self.layer is None else f"{self.stack}.layers[{self.layer}]"
        return f"{where}.{self.kind}"


def find_stacks(model: nn.Module) -> dict[str, str]:
    """Module-name prefix of the encoder and decoder stacks, e.g. {"encoder": "model.encoder."}."""
    found: dict[str, list[str]] = {"encoder": [], "decoder": []}
    for name, module in model.named_modules():
        if isinstance(module, WhisperEncoder):
            found["encoder"].append(name)
        elif isinstance(module, WhisperDecoder):
            found["decoder"].append(name)
    if any(len(names) > 1 for names in found.values()):
        raise ValueError(f"expected at most one Whisper encoder and decoder, found {found}")
    stacks = {stack: (names[0] + "." if names[0] else "") for stack, names in found.items() if names}
    if not stacks:
        raise ValueError(f"{type(model).__name__} contains no WhisperEncoder or WhisperDecoder")
    return stacks


def num_layers(model: nn.Module) -> dict[str, int]:
    """Number of transformer layers in each stack present in the model."""
    modules = dict(model.named_modules())
    return {stack: len(modules[prefix + "layers"]) for stack, prefix in find_stacks(model).items()}


def _classify(stack: str, rel: str, module: nn.Module, leaf: str) -> tuple[int | None, str, str]:
    """(layer, kind, sub) of parameter ``leaf`` of ``module`` at path ``rel`` inside a stack."""
    parts = rel.split(".")
    layer: int | None = None
    if parts[0] in _STACK_MODULES and len(parts) == 1:
        kind, sub = _STACK_MODULES[parts[0]]
    elif parts[0] == "layers" and len(parts) >= 3 and parts[1].isdigit():
        layer, block = int(parts[1]), parts[2:]
        if len(block) == 2 and block[0] in _ATTENTION and block[1] in _PROJECTIONS:
            kind, sub = _ATTENTION[block[0]], _PROJECTIONS[block[1]]
        elif len(block) == 1 and block[0] in ("fc1", "fc2"):
            kind, sub = "ffn", block[0]
        elif len(block) == 1 and block[0] in _LAYER_NORMS:
            kind, sub = "layer_norm", _LAYER_NORMS[block[0]]
        else:
            kind = ""
    else:
        kind = ""
    if not kind or (kind == "cross_attn" and stack != "decoder"):
        # Fail loudly: an unlabelled tensor would silently escape every selector.
        raise ValueError(f"unrecognised Whisper {stack} module {rel!r} ({type(module).__name__})")
    if leaf == "bias":
        return layer, "bias", f"{kind}.{sub}"
    if leaf != "weight":
        raise ValueError(f"unrecognised parameter {leaf!r} of {stack} module {rel!r}")
    return layer, kind, sub


def list_components(model: nn.Module) -> list[TensorInfo]:
    """One TensorInfo per distinct parameter tensor (tied tensors once), in model order."""
    stacks = find_stacks(model)
    modules = dict(model.named_modules())
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    infos = []
    for name, param in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        module = modules[owner]
        stack = next((s for s, prefix in stacks.items() if name.startswith(prefix)), None)
        if stack is not None:
            layer, kind, sub = _classify(stack, owner[len(stacks[stack]):], module, leaf)
        elif owner == "proj_out" and leaf == "weight":
            # Untied output projection (tie_word_embeddings=False): still the embedding component.
            layer, kind, sub, stack = None, "embed", "proj_out", "decoder"
        else:
            raise ValueError(f"parameter {name!r} lies outside the Whisper encoder/decoder")
        prunable = kind in LINEAR_KINDS and isinstance(module, nn.Linear)
        infos.append(TensorInfo(
            name=name, stack=stack, layer=layer, kind=kind, sub=sub,
            shape=tuple(param.shape), numel=param.numel(), prunable=prunable,
            aliases=tuple(n for n in aliases[id(param)] if n != name),
        ))
    return infos


def component_table(model: nn.Module) -> pd.DataFrame:
    """list_components as a DataFrame (layer as nullable integer) for notebooks."""
    df = pd.DataFrame([{**vars(info), "component": info.component} for info in list_components(model)])
    df["layer"] = df["layer"].astype("Int64")
    return df
