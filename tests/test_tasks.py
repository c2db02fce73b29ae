"""Invariants of the foundation tasks (niah, mqar) and of the cached datasets."""

from pathlib import Path

import numpy as np
import pytest

from tasks.base import IGNORE, SPLIT_OFFSETS, hide_answers, make_rng, prompt_and_answer, split_seed, training_views
from tasks.dataset import generate, materialize, read_arrays
from tasks.mqar import Mqar
from tasks.niah import Niah
from tasks.vocab import Vocab

V = Vocab(256)
TASKS = [Niah(train_len=64), Niah(train_len=64, value_len=4, key_len=2), Mqar(train_len=64, num_kv_pairs=8),
         Mqar(train_len=128, num_kv_pairs=16, num_queries=4, power_a=0.01)]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.name}")
@pytest.mark.parametrize("length", [64, 200])
def test_exact_length_labels_only_at_answers_and_oracle(task, length):
    a = generate(task, V, "train", 50, length, seed=3)
    assert a.tokens.shape == (50, length)
    inputs, labels = training_views(a.tokens, a.answer_mask)
    assert inputs.shape == labels.shape == (50, length)
    assert np.array_equal(labels[:, :-1] != IGNORE, a.answer_mask[:, 1:]) and (labels[:, -1] == IGNORE).all()
    assert np.array_equal(labels[:, :-1][labels[:, :-1] != IGNORE], a.tokens[:, 1:][a.answer_mask[:, 1:]])
    pred = task.oracle(V, hide_answers(a.tokens, a.answer_mask), a.answer_mask)
    assert (pred[a.answer_mask] == a.tokens[a.answer_mask]).all(), "the oracle must score 100%"


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_niah_depth_is_honoured(depth):
    t = Niah(train_len=100, haystack="noise")  # token-exact placement; distractor slots: next test
    a = generate(t, V, "test", 20, 100, seed=0, depth=depth)
    context = 100 - t.question_len - t.value_len
    starts = np.argmax(a.tokens == V.NEEDLE, axis=1)
    assert (starts == round(depth * (context - t.needle_len))).all()
    assert np.allclose(a.depth, depth)


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_niah_distractor_needle_is_in_the_slot_nearest_the_depth(depth):
    t = Niah(train_len=100)
    a = generate(t, V, "test", 20, 100, seed=0, depth=depth)
    context = 100 - t.question_len - t.value_len
    starts = np.flatnonzero(a.tokens[0, :context] == V.NEEDLE)
    assert len(starts) == t.slots(100) and (starts == t.slot_starts(100)).all()  # records tile the context
    for row, achieved in zip(a.tokens, a.depth):
        at = int(np.flatnonzero((row[:context] == V.NEEDLE) & (np.roll(row, -1)[:context] == row[context + 1]))[0])
        assert abs(at - depth * (context - t.needle_len)) <= t.needle_len  # within one record
        assert np.isclose(achieved, at / (context - t.needle_len))
        assert abs(achieved - depth) <= t.depth_resolution(100)


def test_generation_is_deterministic_in_the_seed():
    t = Mqar(train_len=64)
    a, b = generate(t, V, "train", 10, 64, 1), generate(t, V, "train", 10, 64, 1)
    c = generate(t, V, "train", 10, 64, 2)
    assert np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, c.tokens)


def test_train_and_test_seeds_are_disjoint():
    starts = sorted(SPLIT_OFFSETS.values())
    assert split_seed("train", 2**30 - 1) < split_seed("val", 0) <= split_seed("val", 2**30 - 1) < split_seed("test", 0)
    assert starts == [0, 2**31, 2**31 + 2**30]
    t = Niah(train_len=64)
    train = {r.tobytes() for r in generate(t, V, "train", 2000, 64, 0).tokens}
    test = {r.tobytes() for r in generate(t, V, "test", 2000, 64, 0).tokens}
    assert not train & test
    with pytest.raises(ValueError, match="seed"):
        make_rng("train", 2**30, "niah", 64, None)


def test_mqar_power_law_clusters_queries_near_the_start():
    lo = generate(Mqar(train_len=512, num_kv_pairs=8, power_a=0.01), V, "train", 400, 512, 0)
    hi = generate(Mqar(train_len=512, num_kv_pairs=8, power_a=1.0), V, "train", 400, 512, 0)
    pos = lambda a: np.nonzero(a.answer_mask)[1].mean()  # noqa: E731
    assert pos(lo) < 0.6 * pos(hi)


@pytest.mark.parametrize("bad, match", [
    (lambda: Niah(value_len=0), "value_len"),
    (lambda: Niah(train_len=4), "train_len"),
    (lambda: Mqar(num_kv_pairs=4, num_queries=5), "num_queries"),
    (lambda: Mqar(train_len=16, num_kv_pairs=8), "train_len"),
    (lambda: Mqar(train_len=1024, num_kv_pairs=200).check_vocab(V), "num_kv_pairs"),
])
def test_bad_knobs_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_dataset_cache_is_reused_and_regenerated_on_config_change(tmp_path):
    t = Niah(train_len=64)
    ds1 = materialize(t, V, "train", 100, 64, 0, tmp_path)
    entries = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    ds2 = materialize(t, V, "train", 100, 64, 0, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == entries
    assert np.array_equal(read_arrays(ds1)[0], read_arrays(ds2)[0])
    materialize(Niah(train_len=64, value_len=3), V, "train", 100, 64, 0, tmp_path)
    assert len([p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]) == len(entries) + 1
    tokens, mask = read_arrays(ds1)
    assert tokens.shape == (100, 64) and mask.dtype == bool


def test_step_sampler_resumes_on_the_same_examples_and_splits_ranks():
    from tasks.sampler import StepSampler

    step = {"s": 0}
    full = list(StepSampler(10, 4, total_steps=6, step=lambda: step["s"], seed=1))
    assert len(full) == 24 and sorted(full[:8]) == sorted(set(full[:8]))  # an epoch has no repeats
    step["s"] = 3
    assert list(StepSampler(10, 4, total_steps=6, step=lambda: step["s"], seed=1)) == full[12:]
    step["s"] = 0
    ranks = [list(StepSampler(10, 4, 6, lambda: 0, seed=1, rank=r, world=2)) for r in (0, 1)]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]


def test_prompt_and_answer_views():
    t = Niah(train_len=64, value_len=3)
    a = generate(t, V, "test", 4, 64, 0, depth=0.5)
    prompt, answer = prompt_and_answer(a.tokens, a.answer_mask, 2)
    assert len(prompt) == 64 - 3 and prompt[-1] == V.ANSWER
    assert np.array_equal(answer, a.tokens[2, -3:])


def test_mqar_model_never_reads_an_answer():
    """Zoology layout: the slot after a query key is a blank in the inputs, in training and in
    evaluation; labels sit at the query key; decode feeds the blanks, so it equals teacher forcing."""
    import torch

    from models.caches import CacheConfig
    from models.families.transformer import Transformer, TransformerConfig
    from pipeline.evaluation.evaluate import run_cell
    from tasks.datamodule import TokenDataset

    t = Mqar(train_len=64)
    a = generate(t, V, "test", 6, 64, 0)
    assert a.inputs is not None and not (a.inputs[a.answer_mask] == a.tokens[a.answer_mask]).any()
    assert (a.inputs[~a.answer_mask] == a.tokens[~a.answer_mask]).all()
    blanks = a.inputs[a.answer_mask]
    assert ((blanks >= V.filler.start) & (blanks < V.filler.stop)).all()
    ds = TokenDataset(a.tokens, a.answer_mask, a.inputs)
    assert torch.equal(ds.input_ids, torch.from_numpy(a.inputs))
    keys = np.roll(a.answer_mask, -1, axis=1)  # the label of each query sits at its key
    assert np.array_equal(ds.labels.numpy()[keys], a.tokens[a.answer_mask])
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=256, d_model=32, n_heads=2, n_layers=1)).eval()
    res = run_cell(model, a, CacheConfig("full"), 6, True, True, torch.device("cpu"))
    assert np.array_equal(res.preds[a.answer_mask], res.tf_preds[a.answer_mask])
    other = generate(t, V, "test", 6, 64, 0)
    other.tokens[other.answer_mask] = V.values.start  # different answers, same inputs
    again = run_cell(model, other, CacheConfig("full"), 6, True, False, torch.device("cpu"))
    assert np.array_equal(again.preds[a.answer_mask], res.preds[a.answer_mask])


def test_mqar_context_offset_shifts_the_pairs_only():
    """context_offset starts the pairs after a 0..offset filler prefix; offset 0 is the zoology
    layout byte for byte, the query region is the same for every row, and the oracle, the answers
    and the shortcut floors follow the shifted pairs."""
    from tasks.baselines import run_baselines

    base = generate(Mqar(train_len=64), V, "test", 200, 64, 0)
    assert np.array_equal(generate(Mqar(train_len=64, context_offset=0), V, "test", 200, 64, 0).tokens, base.tokens)
    t = Mqar(train_len=64, context_offset=30)
    a = generate(t, V, "test", 200, 64, 0)
    offsets = a.slices["context_offset"]
    assert offsets.min() == 0 and offsets.max() == 30 and len(set(offsets.tolist())) > 10
    is_key = (a.inputs >= V.keys.start) & (a.inputs < V.keys.stop)
    assert np.array_equal(is_key.argmax(axis=1), offsets)  # nothing but filler before the first pair
    assert (np.flatnonzero(a.answer_mask.any(axis=0)) > 2 * 4 + 30).all()  # queries after the largest offset
    for i in range(0, 200, 37):
        pairs = a.tokens[i, offsets[i] : offsets[i] + 8]
        table = dict(zip(pairs[0::2], pairs[1::2]))
        for pos in np.flatnonzero(a.answer_mask[i]):
            assert a.tokens[i, pos] == table[a.tokens[i, pos - 1]]
    for row in run_baselines(t, V, 64, n=256):
        limit = 1.0 if row["baseline"] == "oracle" else row["floor"] + 0.05
        assert row["accuracy"] <= limit and (row["baseline"] != "oracle" or row["accuracy"] == 1.0), row
    with pytest.raises(ValueError, match="task.context_offset=-1"):
        Mqar(context_offset=-1)
    with pytest.raises(ValueError, match="too short"):
        Mqar(train_len=40, context_offset=30)


def test_task_recipes_follow_the_task_and_yield_to_overrides():
    from conftest import compose_config

    mqar = compose_config(["task=mqar"])
    assert mqar.optim.lr == 1e-3 and mqar.trainer.max_steps == mqar.recipe.max_steps and mqar.data.batch_size == 64
    assert compose_config(["task=mqar", "trainer=smoke"]).trainer.max_steps == 1
    assert compose_config(["task=mqar", "optim.lr=0.01", "trainer.max_steps=7"]).optim.lr == 0.01
    assert compose_config(["task=mqar", "trainer.max_steps=7"]).trainer.max_steps == 7
    assert compose_config(["task=counting"]).trainer.max_steps == 1000  # no recipe: the trainer default
    # Recipes may set a curriculum and the width it needs; task knobs and overrides still win.
    niah = compose_config([])
    assert niah.data.curriculum_task == "mqar" and 0 < niah.data.curriculum_share < 1 and niah.model.d_model == 128
    assert compose_config(["model.d_model=64"]).model.d_model == 64
    assert compose_config(["data.curriculum_task=null", "data.curriculum_share=0"]).data.curriculum_task is None
    assert compose_config(["task=kv_retrieval", "task.train_queries=3"]).task.train_queries == 3
    assert "train_queries" not in compose_config(["task=mix"]).task  # other tasks' recipes leave mix alone


def test_architecture_recipes_apply_to_their_model_and_task_only():
    """conf/arch_recipe/<model>_<task>.yaml overrides the task's recipe for one architecture; the
    others keep the task's recipe, and the command line still wins."""
    from conftest import compose_config

    mamba = compose_config(["task=mqar", "model=mamba"])
    assert mamba.optim.lr == 1e-2 and mamba.data.batch_size == 16 and mamba.trainer.max_steps == 6000
    for model in ("transformer", "hybrid"):
        other = compose_config(["task=mqar", f"model={model}"])
        assert other.optim.lr == 1e-3 and other.data.batch_size == 64 and other.trainer.max_steps == 2000
    assert compose_config(["task=mqar", "model=mamba", "optim.lr=0.003"]).optim.lr == 3e-3
    assert compose_config(["experiment=arch_compare", "model=mamba"]).optim.lr == 1e-2
    for task in ("niah", "copy"):  # Mamba's optimiser (from mamba_mqar.yaml) over the task's own curriculum
        cfg = compose_config([f"task={task}", "model=mamba"])
        assert (cfg.optim.lr, cfg.data.batch_size, cfg.trainer.max_steps) == (1e-2, 16, 6000)
        assert cfg.data.curriculum_task == "mqar"


def test_every_architecture_recipe_names_an_existing_model_and_task():
    """An optional default silently skips a misspelt file: each arch_recipe must match a model and a task yaml."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    models = {p.stem for p in (conf / "model").glob("*.yaml")}
    tasks = {p.stem for p in (conf / "task").glob("*.yaml")}
    names = [p.stem for p in (conf / "arch_recipe").glob("*.yaml")]
    assert names
    for name in names:
        assert any(name == f"{m}_{t}" for m in models for t in tasks), name
