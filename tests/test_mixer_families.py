"""Every model family through the evaluation's own decode: forced decode predicts what teacher forcing does.

Parametrized over the family registry, so a new mixer family (a models/families/ module + conf/model yaml) is
checked by being registered: its yaml composes into its config, ``pipeline.evaluation.decode`` (prefill, then the
question and answer token by token through its cache) equals one teacher-forced forward, and its cache bytes do not
grow with the length unless it is attention's KV cache.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.caches import CacheConfig
from models.families import FAMILIES
from models.registry import build_model, config_class
from pipeline.evaluation.decode import decode_predictions, teacher_forced_predictions
from tasks.dataset import generate
from tasks.mqar import Mqar
from tasks.vocab import Vocab

FAMILY_NAMES = [f for f in FAMILIES.names() if not f.startswith("toy")]


def tiny(family: str) -> torch.nn.Module:
    cls = config_class(family)
    fields = {f.name for f in dataclasses.fields(cls)}
    knobs = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=2, window=5, init_std=0.2, kernel="torch")
    torch.manual_seed(0)
    return build_model(cls(**{k: v for k, v in knobs.items() if k in fields})).eval()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_yaml_composes_into_its_config(family: str) -> None:
    from conftest import compose_config

    from pipeline.config.model_checks import build_model_config

    cfg = build_model_config(compose_config([f"model={family}"]).model)
    assert cfg.family == family


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_forced_decode_equals_teacher_forced(family: str) -> None:
    model = tiny(family)
    a = generate(Mqar(train_len=40, num_kv_pairs=4), Vocab(64), "test", 4, 40, 0)
    tokens, mask = torch.from_numpy(a.tokens), torch.from_numpy(a.answer_mask)
    dec, _ = decode_predictions(model, tokens, mask, CacheConfig("full"), free_running=False)
    assert torch.equal(dec[mask], teacher_forced_predictions(model, tokens)[mask])


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if f not in ("transformer", "hybrid")])
def test_decode_state_is_constant_in_length(family: str) -> None:
    model = tiny(family)
    sizes = []
    for T in (8, 40):
        cache = model.new_cache(2)
        with torch.no_grad():
            model(torch.randint(0, 64, (2, T)), cache)
        sizes.append(cache.nbytes())
    assert sizes[0] == sizes[1] > 0
