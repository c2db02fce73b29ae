"""Text tasks through a tokenizer: bytes, and a BPE tokenizer trained on the fly with ``tokenizers``.

The oracle of passkey and text_niah scores 1.0 on tokens and on decoded text under both tokenizers;
rows are exactly the requested length; depths are in tokens; the evaluation grid writes the same
row columns as for every other task; text_niah's prompt-only shortcuts stay at their chance floor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.caches import CacheConfig
from models.families.transformer import Transformer, TransformerConfig
from pipeline.config.eval_config import EvalConfig
from pipeline.config.resolve import ConfigError, validate
from pipeline.evaluation.evaluate import evaluate_grid
from pipeline.results.rows import ROW_FIELDS
from tasks.base import hide_answers
from tasks.passkey import INSTRUCTION, NEEDLE, QUESTION, Passkey
from tasks.text import NOISE
from tasks.text_niah import TextNiah
from tasks.tokenizer import ByteTokenizer, load_tokenizer
from tasks.vocab import Vocab
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory) -> str:
    """A small byte-level BPE tokenizer trained here on the tasks' own sentences (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    rng = np.random.default_rng(0)
    texts = [NOISE, INSTRUCTION, QUESTION] + [NEEDLE.format(key=k) for k in rng.integers(10000, 99999, 200)]
    tok.train_from_iterator(texts * 5, trainer)
    path = tmp_path_factory.mktemp("tok")
    tok.save(str(path / "tokenizer.json"))
    return f"hf:{path}"


def check_oracle(task, vocab: Vocab, n: int, length: int, depth: float | None) -> None:
    arrays = task.generate(vocab, n, length, np.random.default_rng(1), depth)
    assert arrays.tokens.shape == (n, length) and arrays.tokens.max() < vocab.size
    pred = task.oracle(vocab, hide_answers(arrays.tokens, arrays.answer_mask), arrays.answer_mask)
    assert (pred[arrays.answer_mask] == arrays.tokens[arrays.answer_mask]).all(), "the oracle scores 1.0"
    assert task.extra_metrics(vocab, arrays, pred)["text_accuracy"] == 1.0
    wrong = arrays.tokens.copy()
    wrong[arrays.answer_mask] = task.encode(" 0")[0]
    assert task.extra_metrics(vocab, arrays, wrong)["text_accuracy"] == 0.0


def test_byte_tokenizer_round_trip_and_bad_specs(tmp_path) -> None:
    tok = ByteTokenizer()
    text = "pass key 12345 — ünïcode"
    assert tok.decode(tok.encode(text)) == text and max(tok.encode(text)) < 256
    with pytest.raises(ValueError, match="tokenizer"):
        load_tokenizer("sentencepiece")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(f"hf:{tmp_path}")


@pytest.mark.parametrize("knobs", [{}, {"keys": 1}, {"values": 3, "keys": 2}, {"keys": 4, "queries": 2},
                                   {"haystack": "text"}], ids=str)
def test_text_niah_oracle_bytes(knobs: dict) -> None:
    task = TextNiah(**knobs)
    check_oracle(task, Vocab(256), 6, task.min_length() + 40, 0.5)


def test_passkey_oracle_and_depth_in_tokens() -> None:
    task = Passkey()
    L = 600
    for depth in (0.0, 0.5, 1.0):
        check_oracle(task, Vocab(256), 4, L, depth)
        a = task.generate(Vocab(256), 4, L, np.random.default_rng(0), depth)
        for row, m in zip(a.tokens, a.answer_mask):
            key = task.decode(row[m]).strip()
            needle = task.encode(NEEDLE.format(key=key))
            intro, fixed = len(task.encode(INSTRUCTION)), len(needle) + len(task.encode(QUESTION)) + m.sum()
            filler = L - intro - fixed
            at = intro + int(np.rint(depth * filler))
            assert (row[at : at + len(needle)] == needle).all(), "the needle starts depth x filler tokens in"


def test_bpe_tokenizer_drives_passkey_and_text_niah(bpe_path: str) -> None:
    tok = load_tokenizer(bpe_path)
    vocab = Vocab(tok.vocab_size)
    for task in (Passkey(tokenizer=bpe_path), TextNiah(tokenizer=bpe_path, keys=3, queries=2)):
        byte_len = type(task)().min_length()
        assert task.min_length() < byte_len, "lengths are counted in tokens of the chosen tokenizer"
        for depth in (0.0, 0.3, 1.0):
            check_oracle(task, vocab, 5, task.min_length() + 30, depth)
    with pytest.raises(ValueError, match="vocab_size"):
        Passkey(tokenizer=bpe_path).check_vocab(Vocab(256))


def test_text_tasks_write_the_same_rows_as_every_task(bpe_path: str) -> None:
    tok = load_tokenizer(bpe_path)
    vocab = Vocab(tok.vocab_size)
    model = Transformer(TransformerConfig(vocab_size=vocab.size, d_model=32, n_heads=2, n_layers=1))
    tasks = [Passkey(tokenizer=bpe_path, train_len=256), TextNiah(tokenizer=bpe_path, train_len=700)]
    rows = evaluate_grid(model, tasks, vocab, EvalConfig(lengths=[700], depths=[0.5], n_examples=2, batch_size=2),
                         policy=CacheConfig(policy="sink_window", window=32), seed=0,
                         row_base={"run_id": "t"}, rows_path=None)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        assert set(ROW_FIELDS) <= set(r) and r["eval_len"] == 700 and r["depth"] == 0.5
        assert 0.0 <= r["text_accuracy"] <= 1.0 and r["cache"].startswith("sink_window")


def test_run_tokenizer_reaches_text_tasks(bpe_path: str) -> None:
    n = load_tokenizer(bpe_path).vocab_size
    cfg = compose_config(["task=passkey", f"tokenizer={bpe_path}", f"vocab_size={n}", "eval.lengths=[1024]",
                          "eval.tasks=[text_niah]"])
    res = validate(cfg)
    assert res.task.tokenizer == bpe_path and res.eval_tasks[0].tokenizer == bpe_path
    with pytest.raises(ConfigError, match="vocab_size"):
        validate(compose_config(["task=passkey", f"tokenizer={bpe_path}", "eval.lengths=[512]"]))
    with pytest.raises(ConfigError, match="tokenizer"):
        validate(compose_config(["task=passkey", "tokenizer=words", "eval.lengths=[512]"]))


def test_text_niah_shortcuts_stay_at_the_floor() -> None:
    task = TextNiah()  # defaults: 4 keys, 1 asked
    arrays = task.generate(Vocab(256), 400, task.min_length() + 100, np.random.default_rng(0))
    refs = [task.references(p) for p in task.prompt_text(arrays.tokens, arrays.answer_mask)]
    for name, said in task.shortcut_predictions(arrays, np.random.default_rng(1)).items():
        acc = np.mean([all(r in s for r in ref) for s, ref in zip(said, refs)])
        assert acc <= task.floor + 0.06, f"{name} scores {acc:.3f} > floor {task.floor}"
    torch.manual_seed(0)
