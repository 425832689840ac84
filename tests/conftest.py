"""Shared fixtures: a tiny randomly initialised Whisper, the real whisper-tiny.en, and the shared data root."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from prunelib.models import LoadedModel, ModelNotFoundError, load_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PRUNELIB_DATA", REPO.parent / "shared" / "data"))


def tiny_whisper_config(**overrides) -> WhisperConfig:
    """A Whisper config small enough to build and run in milliseconds."""
    kwargs = dict(
        vocab_size=64,
        num_mel_bins=80,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=50,  # 100 mel frames in, 50 encoder positions out
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    kwargs.update(overrides)
    return WhisperConfig(**kwargs)


@pytest.fixture
def tiny_whisper() -> WhisperForConditionalGeneration:
    """A fresh tiny Whisper, seeded so every test sees the same weights."""
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_whisper_config())
    model.eval()
    return model


@pytest.fixture
def shared_data() -> Path:
    """The shared offline speech data; tests that need it skip when it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def tiny_en() -> LoadedModel:
    """The real whisper-tiny.en (offline copy or hub); tests skip when neither is there."""
    try:
        return load_model("openai/whisper-tiny.en")
    except ModelNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture
def stamp_executed():
    """Write an executed notebook under <root>/executed/<profile>/ carrying only its provenance stamp."""
    def stamp(root: Path, profile: str, notebook: str, commit: str | None, modified: list[str] | None = None) -> Path:
        folder = root / "executed" / profile
        folder.mkdir(parents=True, exist_ok=True)
        record = {"commit": commit, "modified": modified or [], "profile": profile} if commit else {}
        path = folder / notebook
        path.write_text(json.dumps({"metadata": {"prunelib": record}, "cells": []}), encoding="utf-8")
        return path
    return stamp
