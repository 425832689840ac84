"""Tell quickly whether the Hugging Face hub can be reached, so offline runs fail fast."""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


def hub_endpoint() -> str:
    """The hub address in use ($HF_ENDPOINT, else huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub answers a TCP connect within `timeout` seconds.

    Without this check, `from_pretrained` retries for about a minute before giving up.
    HF_HUB_OFFLINE=1 (the hub's own switch) skips the probe and answers False.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
