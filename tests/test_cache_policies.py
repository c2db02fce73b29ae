"""KV-cache policies (sink_window, duo, quest) and the sink_window / duo training patterns.

Read as the specification: a policy whose budget covers the whole context equals full attention;
StreamingLLM's cache-relative positions equal recomputing attention over the kept tokens at their
slots; every policy holds exactly the bytes its closed form says; DuoAttention's gates train.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.caches import CacheConfig
from models.caches.duo import DuoLayerCache
from models.caches.full import FullKVCache
from models.caches.quest import QuestCache
from models.caches.sink_window import SinkWindowCache
from models.duo import (
    attach_duo_gates,
    clamp_gates_,
    deploy_gates,
    duo_distill_loss,
    duo_hidden_pair,
    load_gates,
    save_gates,
)
from models.families.transformer import Transformer, TransformerConfig
from models.patterns import PATTERNS, AttentionConfig
from models.pos.base import PosConfig
from models.pos.positional import Positional

B, H, HKV, D = 2, 4, 2, 8  # layer-level tests: GQA with groups of 2


# ---------------------------------------------------------------- helpers


def tiny_model(rule: str = "rope", sink: int = 2, window: int = 4, init_std: float = 0.1) -> Transformer:
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256,
                            init_std=init_std, pos=PosConfig(rule=rule),
                            attention=AttentionConfig(sink=sink, window=window))
    return Transformer(cfg).eval()


def run_cached(model: Transformer, policy: CacheConfig, ids: torch.Tensor, prompt: int,
               chunk: int | None = None) -> torch.Tensor:
    """Prefill ids[:, :prompt] (whole, or in chunks), then feed the rest one token at a time."""
    cache = model.new_cache(ids.shape[0], policy)
    outs = []
    step = chunk or prompt
    with torch.no_grad():
        for s in range(0, prompt, step):
            outs.append(model(ids[:, s : min(s + step, prompt)], cache))
        for i in range(prompt, ids.shape[1]):
            outs.append(model(ids[:, i : i + 1], cache))
    return torch.cat(outs, dim=1)  # (B, T, V)


def naive_attention(q, k, v, allowed, bias=None):
    """q (B, H, t, D), k/v (B, Hkv, s, D), allowed (t, s) or (H, t, s) bool -> (B, H, t, D)."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v


def visible(a: int, sink: int, window: int) -> list[int]:
    """Positions a decode step at position a sees: the kept cache (sinks, last window) and itself."""
    return [p for p in range(a + 1) if p < sink or p >= a - window]


def write_gates(tmp_path, gates: torch.Tensor) -> str:
    path = str(tmp_path / "gates.pt")
    save_gates(gates, path)
    return path


def held_storage_bytes(cache) -> int:
    """Bytes of the storages behind the held tensors: catches views pinning larger buffers."""
    storages = {}
    for layer in cache.layers:
        for t in layer.tensors():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 40))


# ---------------------------------------------------------------- sink_window


@pytest.mark.parametrize("positions", ["cache_relative", "absolute"])
@pytest.mark.parametrize("prefill", ["dense", "policy"])
def test_sink_window_with_window_beyond_input_equals_full(ids, positions, prefill):
    model = tiny_model()
    ref = model(ids)
    policy = CacheConfig(policy="sink_window", sink=2, window=64, positions=positions, prefill=prefill,
                         chunk_size=7)
    out = run_cached(model, policy, ids, prompt=24, chunk=7 if prefill == "policy" else None)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", ["rope", "alibi"])
def test_cache_relative_equals_attention_recomputed_at_slot_positions(rule):
    """StreamingLLM: kept keys re-rotated at slots 0..n-1, the query at slot n, every step."""
    S, R, T = 2, 5, 20
    pos = Positional(PosConfig(rule=rule), D, H)
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, HKV, T, D), torch.randn(B, HKV, T, D)
    expected = []
    for a in range(T):
        vis = torch.tensor(visible(a, S, R))
        slots = torch.arange(len(vis))  # the gap after the sinks is closed
        m = slots[-1:]
        qa = pos.rotate(q[:, :, a : a + 1], m, len(vis))
        ka = pos.rotate(k[:, :, vis], slots, len(vis))
        allowed = torch.ones(1, len(vis), dtype=torch.bool)
        expected.append(naive_attention(qa, ka, v[:, :, vis], allowed, pos.bias(m, slots)))
    expected = torch.cat(expected, dim=2)
    # token by token
    cache = SinkWindowCache(S, R, "cache_relative")
    out = torch.cat([cache.attend(q[:, :, a : a + 1], k[:, :, a : a + 1], v[:, :, a : a + 1], pos, a)
                     for a in range(T)], dim=2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    # prefill=policy: token-exact chunks give the same result for any chunking
    for bounds in ([0, 3, 9, 20], [0, 12, 20]):
        cache = SinkWindowCache(S, R, "cache_relative", token_exact=True)
        out = torch.cat([cache.attend(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], pos, s)
                         for s, e in zip(bounds[:-1], bounds[1:])], dim=2)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", ["rope", "alibi"])
def test_absolute_positions_decode_and_chunkwise_prefill(rule):
    """DuoAttention streaming heads: absolute positions; a chunk sees kept cache + itself causally."""
    S, R, T = 2, 5, 20
    pos = Positional(PosConfig(rule=rule), D, H)
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, HKV, T, D), torch.randn(B, HKV, T, D)
    qr, kr = pos.rotate(q, torch.arange(T), T), pos.rotate(k, torch.arange(T), T)
    bounds = [0, 9, 13, 14, 15, 20]  # a dense first chunk, a chunk after eviction, decode steps
    cache = SinkWindowCache(S, R, "absolute")
    for s, e in zip(bounds[:-1], bounds[1:]):
        out = cache.attend(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], pos, s)
        keys = torch.tensor(visible(s - 1, S, R - 1) if s else [], dtype=torch.long)  # kept before s
        keys = torch.cat((keys, torch.arange(s, e)))
        allowed = keys[None, :] <= torch.arange(s, e)[:, None]
        expected = naive_attention(qr[:, :, s:e], kr[:, :, keys], v[:, :, keys], allowed,
                                   pos.bias(torch.arange(s, e), keys))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
        assert cache.k.shape[2] == min(e, S + R)


def test_chunked_prefill_equals_token_by_token_streaming(ids):
    model = tiny_model()
    policy = CacheConfig(policy="sink_window", sink=2, window=6, prefill="policy", chunk_size=5)
    chunked = run_cached(model, policy, ids, prompt=30, chunk=5)
    stepwise = run_cached(model, policy, ids, prompt=30, chunk=1)
    torch.testing.assert_close(chunked, stepwise, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- duo


@pytest.mark.parametrize("prefill_chunk", [None, 8])
def test_duo_gates_one_is_full_and_zero_is_sink_window(tmp_path, ids, prefill_chunk):
    model = tiny_model()
    full = run_cached(model, CacheConfig(policy="full"), ids, prompt=24, chunk=prefill_chunk)
    ones = CacheConfig(policy="duo", gates_path=write_gates(tmp_path, torch.ones(2, 2)), threshold=0.5,
                       sink=2, window=4)
    torch.testing.assert_close(run_cached(model, ones, ids, 24, prefill_chunk), full, atol=1e-5, rtol=1e-4)
    zeros = CacheConfig(policy="duo", gates_path=write_gates(tmp_path, torch.zeros(2, 2)), threshold=0.5,
                        sink=2, window=4)
    stream = CacheConfig(policy="sink_window", positions="absolute", sink=2, window=4)
    torch.testing.assert_close(run_cached(model, zeros, ids, 24, prefill_chunk),
                               run_cached(model, stream, ids, 24, prefill_chunk), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(run_cached(model, stream, ids, 24, prefill_chunk), full, atol=1e-3)


@pytest.mark.parametrize("rule", ["rope", "alibi"])
def test_duo_mixed_heads_follow_their_role(rule):
    """Query heads of a retrieval KV head equal full attention; the others equal sink_window."""
    T = 20
    pos = Positional(PosConfig(rule=rule), D, H)
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, HKV, T, D), torch.randn(B, HKV, T, D)
    duo, full, stream = DuoLayerCache([False, True], 2, 4), FullKVCache(), SinkWindowCache(2, 4, "absolute")
    for s, e in zip([0, 12, 13, 14], [12, 13, 14, 20]):
        args = (q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], pos, s)
        y, yf, ys = duo.attend(*args), full.attend(*args), stream.attend(*args)
        torch.testing.assert_close(y[:, 2:], yf[:, 2:], atol=1e-5, rtol=1e-4)  # KV head 1: retrieval
        torch.testing.assert_close(y[:, :2], ys[:, :2], atol=1e-5, rtol=1e-4)  # KV head 0: streaming
    assert duo.full.k.shape == (B, 1, T, D) and duo.stream.k.shape == (B, 1, 6, D)


def reference_sparsify(alpha: np.ndarray, sparsity: float, rng: np.random.Generator) -> np.ndarray:
    """A port of duo_attn/utils.py::sparsify_attention_heads (its sparsity branch): True = retrieval."""
    alpha = alpha + rng.uniform(0, 1e-6, alpha.shape)  # tie-breaking noise
    threshold = np.quantile(alpha, sparsity)
    if sparsity >= 1:
        threshold = 2
    if sparsity <= 0:
        threshold = -1
    return alpha >= threshold


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0])
def test_deploy_gates_equals_reference_sparsify(sparsity):
    gates = torch.rand(4, 6, generator=torch.Generator().manual_seed(3))  # distinct: no ties to break
    ref = reference_sparsify(gates.double().numpy(), sparsity, np.random.default_rng(0))
    assert deploy_gates(gates, sparsity=sparsity).numpy().tolist() == ref.tolist()
    # ties (all gates equal, as untrained): the same number streams, the heads chosen at random by seed
    tied = torch.ones(4, 6)
    ref_tied = reference_sparsify(tied.double().numpy(), sparsity, np.random.default_rng(0))
    picks = {tuple(deploy_gates(tied, sparsity=sparsity, seed=s).flatten().tolist()) for s in range(8)}
    assert {sum(p) for p in picks} == {int(ref_tied.sum())}
    if 0 < sparsity < 1:
        assert len(picks) > 1  # not a fixed (layer, head) order
    assert deploy_gates(tied, sparsity=sparsity, seed=5).tolist() == deploy_gates(tied, sparsity=sparsity,
                                                                                  seed=5).tolist()


def test_deploy_gates_global_cut_threshold_and_validation(tmp_path):
    gates = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.6]])
    ret = deploy_gates(gates, sparsity=0.5)
    # one cut over all 8 heads, as alpha >= quantile_0.5 (ceil(0.5 * 7) = 4 streaming heads)
    assert ret.tolist() == [[True, False, False, False], [False, True, True, True]]
    assert deploy_gates(gates, sparsity=0.75).sum() == 8 - math.ceil(0.75 * 7)
    assert deploy_gates(gates, sparsity=0.0).all()
    assert not deploy_gates(gates, sparsity=1.0).any()  # sparsity 1: every head streams (the reference)
    assert deploy_gates(gates, threshold=0.6).tolist() == ret.tolist()
    path = write_gates(tmp_path, gates)
    torch.testing.assert_close(load_gates(path), gates)
    with pytest.raises(ValueError, match="exactly one"):
        CacheConfig(policy="duo", gates_path=path)
    with pytest.raises(ValueError, match="exactly one"):
        CacheConfig(policy="duo", gates_path=path, sparsity=0.5, threshold=0.5)
    with pytest.raises(ValueError, match="gates_path"):
        CacheConfig(policy="duo", sparsity=0.5)
    with pytest.raises(ValueError, match="n_kv_heads"):
        bad = write_gates(tmp_path, torch.ones(3, 2))  # 3 layers, the model has 2
        tiny_model().new_cache(1, CacheConfig(policy="duo", gates_path=bad, sparsity=0.5))


# ---------------------------------------------------------------- quest


@pytest.mark.parametrize("selection,page", [("kernel", 8), ("eval", 1)])
def test_quest_budget_covering_context_equals_full(ids, selection, page):
    # (the eval path clips its budget to the keys and floors it to pages: with a partial last page it
    # drops one page even when the budget covers the context, as the reference does; so page 1 there)
    model = tiny_model()
    full = run_cached(model, CacheConfig(policy="full"), ids, prompt=20)
    quest = CacheConfig(policy="quest", budget=48, page_size=page, dense_layers=0, selection=selection)
    torch.testing.assert_close(run_cached(model, quest, ids, prompt=20), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", ["rope", "alibi"])
def test_quest_decode_reads_top_pages_per_query_head(rule):
    """Kernel path: pages scored by sum_i max(q_i m_i, q_i M_i) per query head; current page forced."""
    P, budget, T0, steps = 4, 12, 30, 6
    pos = Positional(PosConfig(rule=rule), D, H)
    T = T0 + steps
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, HKV, T, D), torch.randn(B, HKV, T, D)
    qr, kr = pos.rotate(q, torch.arange(T), T), pos.rotate(k, torch.arange(T), T)
    cache = QuestCache(budget, P, sparse=True, selection="kernel")
    cache.attend(q[:, :, :T0], k[:, :, :T0], v[:, :, :T0], pos, 0)
    for a in range(T0, T):
        out = cache.attend(q[:, :, a : a + 1], k[:, :, a : a + 1], v[:, :, a : a + 1], pos, a)
        n_pages = a // P + 1
        keys = kr[:, :, : a + 1].repeat_interleave(H // HKV, dim=1)  # (B, H, a+1, D)
        allowed = torch.zeros(B, H, 1, a + 1, dtype=torch.bool)
        for b in range(B):
            for h in range(H):
                qh = qr[b, h, a]
                scores = [torch.maximum(qh * keys[b, h, p * P : (p + 1) * P].amin(0),
                                        qh * keys[b, h, p * P : (p + 1) * P].amax(0)).sum()
                          for p in range(n_pages - 1)]
                top = torch.tensor(scores).topk(budget // P - 1).indices.tolist() + [n_pages - 1]
                for p in top:
                    allowed[b, h, 0, p * P : (p + 1) * P] = True
        allowed = allowed[..., : a + 1]
        expected = naive_attention(qr[:, :, a : a + 1], kr[:, :, : a + 1], v[:, :, : a + 1], allowed,
                                   pos.bias(torch.tensor([a]), torch.arange(a + 1)))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
        dense = naive_attention(qr[:, :, a : a + 1], kr[:, :, : a + 1], v[:, :, : a + 1],
                                torch.ones(1, a + 1, dtype=torch.bool),
                                pos.bias(torch.tensor([a]), torch.arange(a + 1)))
        assert not torch.allclose(out, dense, atol=1e-4)  # it really is sparse
    lo, hi = kr.unflatten(2, (T // P, P)).amin(3), kr.unflatten(2, (T // P, P)).amax(3)
    torch.testing.assert_close(cache.kmin, lo)
    torch.testing.assert_close(cache.kmax, hi)


# ---------------------------------------------------------------- bytes, prefill modes, clone


def test_bytes_match_held_tensors_and_closed_forms(tmp_path):
    L, Bsz, Hkv, Dh, N, S, R, P = 2, 2, 2, 8, 60, 2, 8, 16
    ids = torch.randint(0, 64, (Bsz, N))
    model = tiny_model()
    gates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # one retrieval head per layer
    gates_path = write_gates(tmp_path, gates)
    policies = {
        "full": (CacheConfig(policy="full"), 2 * L * Bsz * Hkv * N * Dh * 4),
        "sink_window": (CacheConfig(policy="sink_window", sink=S, window=R),
                        2 * L * Bsz * Hkv * (S + R) * Dh * 4),
        "sink_window_abs": (CacheConfig(policy="sink_window", sink=S, window=R, positions="absolute"),
                            2 * L * Bsz * Hkv * (S + R) * Dh * 4),
        "duo": (CacheConfig(policy="duo", gates_path=gates_path, sparsity=0.5, sink=S, window=R),
                2 * L * Bsz * Dh * 4 * (1 * N + 1 * (S + R))),
        # layer 0 dense (KV only), layer 1 sparse: KV + min/max per page
        "quest": (CacheConfig(policy="quest", budget=32, page_size=P, dense_layers=1),
                  2 * L * Bsz * Hkv * N * Dh * 4 + 2 * Bsz * Hkv * math.ceil(N / P) * Dh * 4),
    }
    for name, (policy, closed) in policies.items():
        for chunk in (None, 16):
            cache = model.new_cache(Bsz, policy)
            with torch.no_grad():
                for s in range(0, N, chunk or N):
                    model(ids[:, s : s + (chunk or N)], cache)
            assert cache.nbytes() == closed, name
            assert held_storage_bytes(cache) == closed, name  # no view pins a larger buffer


@pytest.mark.parametrize("name", ["sink_window", "duo", "quest"])
def test_prefill_policy_and_dense_both_run(tmp_path, ids, name):
    model = tiny_model()
    knobs = {"sink_window": {"sink": 2, "window": 4}, "quest": {"budget": 16, "page_size": 4, "dense_layers": 0},
             "duo": {"sink": 2, "window": 4, "sparsity": 0.5,
                     "gates_path": write_gates(tmp_path, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))}}[name]
    outs = {}
    for prefill, chunk in (("dense", None), ("policy", 8)):
        policy = CacheConfig(policy=name, prefill=prefill, chunk_size=8, **knobs)
        assert f"prefill={prefill}" in policy.label
        outs[prefill] = run_cached(model, policy, ids, prompt=32, chunk=chunk)
        assert outs[prefill].shape == (2, 40, 64) and torch.isfinite(outs[prefill]).all()
    if name == "quest":  # prefill is dense either way; chunking only changes the order of work
        torch.testing.assert_close(outs["policy"], outs["dense"], atol=1e-5, rtol=1e-4)
    else:  # chunked sink/window prefill sees fewer keys than the dense prompt
        assert not torch.allclose(outs["policy"], outs["dense"], atol=1e-4)


@pytest.mark.parametrize("name", ["full", "sink_window", "duo", "quest"])
def test_clone_gives_identical_continuations(tmp_path, ids, name):
    model = tiny_model()
    knobs = {"full": {}, "sink_window": {"sink": 2, "window": 4},
             "quest": {"budget": 8, "page_size": 4, "dense_layers": 0},
             "duo": {"sink": 2, "window": 4, "sparsity": 0.5,
                     "gates_path": write_gates(tmp_path, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))}}[name]
    policy = CacheConfig(policy=name, **knobs)
    cache = model.new_cache(2, policy)
    with torch.no_grad():
        model(ids[:, :30], cache)
        copy = cache.clone()
        a = torch.cat([model(ids[:, i : i + 1], cache) for i in range(30, 40)], dim=1)
        assert copy.seen == 30 and copy.nbytes() <= cache.nbytes()
        b = torch.cat([model(ids[:, i : i + 1], copy) for i in range(30, 40)], dim=1)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---------------------------------------------------------------- training patterns and gates


@pytest.mark.parametrize("rule", ["rope", "alibi"])
def test_sink_window_and_duo_patterns_equal_naive_masked_attention(rule):
    T, S, R = 24, 3, 5
    cfg = AttentionConfig(sink=S, window=R)
    pos = Positional(PosConfig(rule=rule), D, H)
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, HKV, T, D), torch.randn(B, HKV, T, D)
    bias = pos.bias(torch.arange(T), torch.arange(T))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    streaming = (j <= i) & ((j < S) | (j > i - R))  # StreamingLLM's token-exact mask
    sw = naive_attention(q, k, v, streaming, bias)
    torch.testing.assert_close(PATTERNS.get("sink_window")(q, k, v, cfg, bias=bias), sw, atol=1e-5, rtol=1e-4)
    assert streaming.sum(-1).max() == S + R
    gate = torch.tensor([0.3, 1.7])  # clamped to [0, 1]; shared by each KV head's query group
    full = naive_attention(q, k, v, j <= i, bias)
    g = torch.tensor([0.3, 0.3, 1.0, 1.0]).view(1, H, 1, 1)
    torch.testing.assert_close(PATTERNS.get("duo")(q, k, v, cfg, bias=bias, gate=gate), g * full + (1 - g) * sw,
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="attach_duo_gates"):
        PATTERNS.get("duo")(q, k, v, cfg, bias=bias, gate=None)


def test_gate_optimisation_lowers_loss_and_separates_heads():
    torch.manual_seed(0)
    model = tiny_model(sink=2, window=4, init_std=0.3)
    gates = attach_duo_gates(model)
    assert [p for p in model.parameters() if p.requires_grad] == [gates]
    model.train()
    ids = torch.randint(0, 64, (4, 48))
    mask = torch.zeros(4, 48, dtype=torch.bool)
    mask[:, 32:] = True  # supervise the tail, where sink + window drops most of the context
    opt = torch.optim.AdamW([gates], lr=0.02, weight_decay=0.0)
    losses = []
    for _ in range(30):
        clamp_gates_(gates)
        h_full, h_mix = duo_hidden_pair(model, ids)
        loss = duo_distill_loss(h_full, h_mix, mask, gates)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    clamp_gates_(gates)
    assert losses[-1] < losses[0]
    assert gates.max() - gates.min() > 0.03, gates  # heads that matter keep high gates
    assert model.cfg.attention.train == "full"  # the pattern switch is restored


def reference_two_way_loss(model: Transformer, gates: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                           lam: float = 0.05) -> torch.Tensor:
    """A port of DuoAttention's training step on our weights: ``llama_duo_attention_forward_two_way`` per
    layer (teacher q/k/v under no_grad, full attention; student (1-a) Stream(own q/k/v) + a Full(teacher)),
    written as an explicit layer loop with naive masked attention, then train.py's loss."""
    cfg = model.cfg
    T, S, R = ids.shape[1], cfg.attention.sink, cfg.attention.window
    H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    causal = j <= i
    streaming = causal & ((j < S) | (j >= i - R + 1))  # duo-attention generate_streaming_mask
    pos = torch.arange(T)
    x_t = x_s = model.embed_tokens(ids)
    for li, block in enumerate(model.layers):
        attn = block.self_attn

        def qkv(x, attn=attn):
            Bx = x.shape[0]
            q = attn.q_proj(x).view(Bx, T, H, hd).transpose(1, 2)
            k = attn.k_proj(x).view(Bx, T, Hkv, hd).transpose(1, 2)
            v = attn.v_proj(x).view(Bx, T, Hkv, hd).transpose(1, 2)
            return attn.positional.rotate(q, pos, T), attn.positional.rotate(k, pos, T), v

        with torch.no_grad():
            full = naive_attention(*qkv(block.input_layernorm(x_t)), causal)
        stream = naive_attention(*qkv(block.input_layernorm(x_s)), streaming)
        a = gates[li].clamp(0, 1).repeat_interleave(H // Hkv).view(1, H, 1, 1)
        mixed = (1 - a) * stream + a * full
        x_t = x_t + attn.o_proj(full.transpose(1, 2).reshape(ids.shape[0], T, -1))
        x_s = x_s + attn.o_proj(mixed.transpose(1, 2).reshape(ids.shape[0], T, -1))
        x_t = x_t + block.mlp(block.post_attention_layernorm(x_t))
        x_s = x_s + block.mlp(block.post_attention_layernorm(x_s))
    h_t, h_s = model.norm(x_t), model.norm(x_s)
    distill = ((h_t - h_s) ** 2).mean(-1)[mask].sum() / mask.sum()
    return distill + lam * gates.abs().mean()


def test_two_way_forward_equals_reference_loss_and_gate_gradient():
    torch.manual_seed(0)
    model = tiny_model(sink=2, window=6, init_std=0.3)
    gates = attach_duo_gates(model)
    with torch.no_grad():
        gates.copy_(torch.rand_like(gates))
    model.train()
    ids = torch.randint(0, 64, (3, 40))
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[:, 28:] = True
    h_full, h_mix = duo_hidden_pair(model, ids)  # objective two_way
    ours = duo_distill_loss(h_full, h_mix, mask, gates)
    (g_ours,) = torch.autograd.grad(ours, gates)
    ref_gates = gates.detach().clone().requires_grad_(True)
    ref = reference_two_way_loss(model, ref_gates, ids, mask)
    (g_ref,) = torch.autograd.grad(ref, ref_gates)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-7, rtol=1e-4)
    # the earlier objective (full branch on the student's own states) is a different function
    h_full2, h_mix2 = duo_hidden_pair(model, ids, objective="same_states")
    same = duo_distill_loss(h_full2, h_mix2, mask, gates)
    assert not torch.allclose(same, ref, rtol=1e-3)
    assert model.cfg.attention.train == "full"


def test_duo_schedule_matches_reference_lambda():
    from pipeline.train.stages.duo_gates import duo_schedule

    for total in (10, 37, 2000):
        ours = duo_schedule(total)
        ref = [min(1, max((s + 1) / (total // 5), 0.1), max((total - s) / (total // 5), 0.1)) for s in range(total)]
        assert [ours(s) for s in range(total)] == pytest.approx(ref)
    assert duo_schedule(2000)(0) == 0.1  # the warm-up starts at the floor


def reference_quest_mask(q: torch.Tensor, k: torch.Tensor, token_budget: int, chunk_size: int) -> torch.Tensor:
    """A port of Quest's evaluation path (evaluation/quest_attention.py: the page estimate in ``forward``
    and ``local_heavy_hitter_mask``) for one decode query: q (B, H, 1, D), k (B, H, N, D) rotated and
    repeated per query head -> the (B, H, 1, N) bool mask of the tokens read."""
    N = k.shape[-2]
    sign = (q > 0) + (~(q > 0)) * -1
    max_key = k * sign
    pad = chunk_size - ((N - 1) % chunk_size + 1)
    fill = torch.finfo(max_key.dtype).min
    max_key = torch.cat([max_key, torch.ones(*max_key.shape[:2], pad, max_key.shape[3]) * fill], dim=-2)
    chunk_max = max_key.reshape(*max_key.shape[:2], -1, chunk_size, max_key.shape[3]).amax(dim=-2)
    chunk_max = chunk_max.unsqueeze(-2).repeat(1, 1, 1, chunk_size, 1).reshape(*k.shape[:2], -1, k.shape[3])[:, :, :N]
    weights = (q * sign).float() @ chunk_max.transpose(2, 3)  # (B, H, 1, N)
    budget = min(N, token_budget)
    weights = torch.cat([weights, torch.ones(*weights.shape[:3], pad) * torch.finfo(weights.dtype).min], -1)
    chunks = weights.reshape(*weights.shape[:3], -1, chunk_size).amax(dim=-1)
    _, topk = chunks.topk(k=min(max(3, budget // chunk_size), chunks.size(-1)), dim=-1)
    topk = topk.unsqueeze(-1).repeat(1, 1, 1, 1, chunk_size) * chunk_size + torch.arange(chunk_size)
    topk = topk.reshape(*topk.shape[:3], -1)
    mask = torch.zeros_like(weights, dtype=torch.bool)
    mask.scatter_(-1, topk, True)
    return mask[..., :N]


@pytest.mark.parametrize("budget", [4, 12, 20, 200])
def test_quest_eval_path_pages_equal_reference(budget):
    """Eval path: page sets per query head and the outputs equal the port of quest_attention.py."""
    P, T0, steps = 4, 30, 7
    pos = Positional(PosConfig(rule="rope"), D, H)
    T = T0 + steps
    torch.manual_seed(1)
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, HKV, T, D), torch.randn(B, HKV, T, D)
    qr, kr = pos.rotate(q, torch.arange(T), T), pos.rotate(k, torch.arange(T), T)
    cache = QuestCache(max(budget, P), P, sparse=True, selection="eval")
    cache.attend(q[:, :, :T0], k[:, :, :T0], v[:, :, :T0], pos, 0)
    G = H // HKV
    for a in range(T0, T):
        out = cache.attend(q[:, :, a : a + 1], k[:, :, a : a + 1], v[:, :, a : a + 1], pos, a)
        keys = kr[:, :, : a + 1].repeat_interleave(G, dim=1)  # (B, H, a+1, D)
        ref = reference_quest_mask(qr[:, :, a : a + 1], keys, budget, P)  # (B, H, 1, a+1)
        ref_pages = [[set(torch.nonzero(ref[b, h, 0, ::P]).flatten().tolist()) for h in range(H)] for b in range(B)]
        n_pages = a // P + 1
        if min(max(3, min(a + 1, budget) // P), n_pages) < n_pages:
            ours = cache.select_pages(qr[:, :, a : a + 1]).view(B, H, -1)  # (B, H, n)
            assert [[set(ours[b, h].tolist()) for h in range(H)] for b in range(B)] == ref_pages
        expected = naive_attention(qr[:, :, a : a + 1], kr[:, :, : a + 1], v[:, :, : a + 1], ref)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    if budget == 4:  # a budget of one page still reads three (max(3, budget // page))
        assert cache.n_selected(40) == 3


def test_quest_dense_layers_keep_the_last_layer_sparse():
    from models.caches.quest import effective_dense_layers

    assert effective_dense_layers(2, 32) == 2 and effective_dense_layers(2, 4) == 2
    assert effective_dense_layers(2, 2) == 1 and effective_dense_layers(2, 1) == 0
    cache = tiny_model().new_cache(1, CacheConfig(policy="quest", budget=16, page_size=4))  # 2 layers
    assert [layer.sparse for layer in cache.layers] == [False, True]
    with pytest.raises(ValueError, match="cache.selection"):
        CacheConfig(policy="quest", selection="exact")


def test_quest_preallocates_and_decode_memory_is_analytic():
    """After reserve() nothing is reallocated: KV and page bounds are written in place from the first
    chunk to the last decode step, and the decode loop's memory (cache + what steps allocate) stays
    within 10% of the analytic bytes (KV + page min/max of the sparse layers) at 4096 tokens."""
    from pipeline.train.memory import measure_peak

    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, max_seq_len=8192)
    model = Transformer(cfg).eval()
    policy = CacheConfig(policy="quest", budget=64, page_size=16)
    N, steps = 4096, 24
    ids = torch.randint(0, 64, (1, N))
    cache = model.new_cache(1, policy)
    cache.reserve(N)
    layer = cache.layers[1]  # the sparse one (layer 0 stays dense in a 2-layer model)
    with torch.no_grad():
        model(ids[:, :16], cache)
        ptrs = (layer.kv.k.data_ptr(), layer.kmin.data_ptr(), layer.kmax.data_ptr())
        for s in range(16, N - steps, 256):  # chunked prefill (a dense one would hold (T, T) scores)
            model(ids[:, s : min(s + 256, N - steps)], cache)
        held = cache.nbytes()
        with measure_peak(model) as m:
            for t in range(N - steps, N):
                model(ids[:, t : t + 1], cache)
    assert (layer.kv.k.data_ptr(), layer.kmin.data_ptr(), layer.kmax.data_ptr()) == ptrs  # written in place
    per_token_head = 2 * cfg.head_dim * 4  # K and V, fp32
    analytic = cfg.n_layers * cfg.n_kv_heads * N * per_token_head + 1 * cfg.n_kv_heads * (N // 16) * per_token_head
    assert held == cache.nbytes() == analytic
    # The tracker counts what the steps allocate (a view of the cache or of a parameter is no new
    # memory); with the cache they read, that is the decode loop's memory.
    decode_bytes = held + m.region_peak_bytes
    assert held <= decode_bytes <= 1.10 * analytic, (decode_bytes, analytic)
