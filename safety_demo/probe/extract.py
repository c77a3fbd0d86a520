"""Hidden states at prefill (h₀: final layer, last prompt position) for any adapter, batched."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.base import Request, VLMAdapter
from ..models.threads import all_cores


@torch.no_grad()
def extract_h0(
    adapter: VLMAdapter,
    requests: Sequence[Request] | Sequence[Callable[[], Request]],
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "h₀",
) -> np.ndarray:
    """[N, D] float32 h₀ of each request. Items may be callables, rendered only when batched."""
    out = np.zeros((len(requests), adapter.hidden_size), dtype=np.float32)
    bar = tqdm(total=len(requests), desc=desc, disable=not progress, unit="item")
    for start in range(0, len(requests), batch_size):
        batch = [r() if callable(r) else r for r in requests[start : start + batch_size]]
        with all_cores():  # a no-op outside a server (models/threads.py)
            out[start : start + len(batch)] = adapter.prefill(batch).hidden.float().cpu().numpy()
        bar.update(len(batch))
    bar.close()
    return out
