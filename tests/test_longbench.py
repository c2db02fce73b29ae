"""LongBench from local files: the official metrics against hand-computed values on the shipped
fixture (tests/fixtures/longbench, each value explained in expected_scores.json), the loader's
errors, and the middle truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config.resolve import ConfigError, validate
from pipeline.evaluation.longbench_eval import LongBenchConfig, truncate_middle
from tasks.longbench import DATASETS, MAX_NEW_TOKENS, PROMPTS, check_files, load_dataset
from tasks.longbench_metrics import METRICS, classification, score_example
from tests.conftest import compose_config

FIXTURE = Path(__file__).parent / "fixtures" / "longbench"
EXPECTED = json.loads((FIXTURE / "expected_scores.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", EXPECTED, ids=lambda c: f"{c['dataset']}:{c['pred'][:20]!r}")
def test_scorers_equal_hand_computed_values(case: dict) -> None:
    ex = load_dataset(FIXTURE, case["dataset"])[case["example"]]
    got = score_example(case["dataset"], case["pred"], ex.answers, ex.all_classes)
    assert got == pytest.approx(case["expected"], abs=1e-6), case["why"]


def test_every_dataset_has_a_prompt_a_budget_and_a_metric() -> None:
    assert len(DATASETS) == 21 and set(DATASETS) == set(METRICS) == set(MAX_NEW_TOKENS)
    assert all("{context}" in PROMPTS[d] for d in DATASETS)
    ex = load_dataset(FIXTURE, "hotpotqa")[0]
    assert ex.prompt.endswith(f"Question: {ex.input}\nAnswer:") and ex.context in ex.prompt
    assert MAX_NEW_TOKENS["gov_report"] == 512 and MAX_NEW_TOKENS["hotpotqa"] == 32


def test_classification_keeps_the_official_loop() -> None:
    classes = ["Entity", "Entity: animal", "Entity: food"]
    assert classification("Entity: animal", "Entity: animal", all_classes=classes) == 1.0  # 'Entity' is dropped
    assert classification("Entity: animal or Entity: food", "Entity: animal", all_classes=classes) == 0.5
    # 'Entity' and 'Entity: ani' are both parts of the true name, but the official loop removes from the
    # list it iterates and so skips 'Entity: ani' after removing 'Entity': two classes remain, 1/2
    classes = ["Entity", "Entity: ani", "Entity: animal"]
    assert classification("Entity: animal", "Entity: animal", all_classes=classes) == 0.5


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no file for \['qasper'\].*qasper.jsonl"):
        load_dataset(FIXTURE, "qasper")
    with pytest.raises(ValueError, match="unknown datasets"):
        check_files(FIXTURE, ["hotpot"])
    with pytest.raises(ValueError, match="not a directory"):
        check_files(tmp_path / "nope", None)
    with pytest.raises(ValueError, match="holds no LongBench file"):
        check_files(tmp_path, None)
    (tmp_path / "trec.jsonl").write_text('{"input": "q", "answers": ["a"]}\n')
    with pytest.raises(ValueError, match=r"trec.jsonl:1 lacks the fields \['context'\]"):
        load_dataset(tmp_path, "trec")
    assert check_files(FIXTURE, None) == [d for d in DATASETS if (FIXTURE / f"{d}.jsonl").exists()]


def test_missing_dir_is_a_config_error_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.longbench.dir"):
        validate(compose_config(["eval=longbench"]))
    with pytest.raises(ConfigError, match="qasper"):
        validate(compose_config(["eval=longbench", f"eval.longbench.dir={FIXTURE}",
                                 "eval.longbench.datasets=[qasper]"]))
    assert LongBenchConfig(dir=str(FIXTURE), datasets=["lcc"]).check() == ["lcc"]


def test_truncate_middle_keeps_both_ends() -> None:
    ids = list(range(10))
    assert truncate_middle(ids, 10) == ids
    assert truncate_middle(ids, 5) == [0, 1, 2, 8, 9]
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]


@pytest.mark.parametrize("tail", [0, 5])
@pytest.mark.parametrize("prefill", ["dense", "policy"])
def test_greedy_generate_equals_recomputing_every_step(prefill: str, tail: int) -> None:
    import torch

    from models.caches import CacheConfig
    from models.families.transformer import Transformer, TransformerConfig
    from pipeline.evaluation.longbench_eval import greedy_generate

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=2, init_std=0.3)).eval()
    prompt = torch.randint(0, 64, (11,)).tolist()
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):  # the reference: a fresh forward over everything so far, argmax of the last
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    got = greedy_generate(model, prompt, 6, CacheConfig(policy="full", prefill=prefill, chunk_size=4),
                          torch.device("cpu"), stop_ids=[], tail=tail)
    assert got == seq[len(prompt):]  # under full attention the protocol (tail fed token by token) changes nothing
    new = seq[len(prompt):]
    stop = new[2]
    assert greedy_generate(model, prompt, 6, CacheConfig(), torch.device("cpu"), stop_ids=[stop]) == \
        new[: new.index(stop)], "generation ends before the first stop token"


def test_longbench_tail_goes_through_the_policy() -> None:
    """The last prompt tokens are fed through the cache policy (DuoAttention's LongBench pred.py): with a
    window shorter than the prompt, feeding 20 of them token by token changes the generation."""
    import torch

    from models.caches import CacheConfig
    from models.families.transformer import Transformer, TransformerConfig
    from pipeline.evaluation.longbench_eval import greedy_generate

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=2, init_std=0.3)).eval()
    prompt = torch.randint(0, 64, (40,)).tolist()
    window = CacheConfig(policy="sink_window", sink=1, window=4)
    outs = {tail: greedy_generate(model, prompt, 8, window, torch.device("cpu"), stop_ids=[], tail=tail)
            for tail in (0, 20)}
    assert outs[0] != outs[20]
