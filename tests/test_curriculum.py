"""The training curriculum (tasks/curriculum.py): a first phase on another family, then the task.

The sampler and the data module are checked against what each step must read; the lr schedule
against its closed form; that the curriculum makes NIAH learnable is a measured claim
(docs/reproductions.md), not a unit test.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config.sections import OptimConfig
from pipeline.train.module import LitLM, phase_lr
from tasks.curriculum import curriculum_steps, curriculum_task
from tasks.datamodule import TaskDataModule
from tasks.mqar import Mqar
from tasks.niah import Niah
from tasks.sampler import CurriculumSampler, StepSampler
from tasks.vocab import Vocab

V = Vocab(256)


def stream(first_steps: int, n_first: int, n_task: int, total: int, start: int, rank: int = 0, world: int = 1):
    at = lambda: start  # noqa: E731
    task = StepSampler(n_task, 4, total - first_steps, step=lambda: max(0, at() - first_steps), seed=1, rank=rank,
                       world=world)
    warm = StepSampler(n_first, 4, first_steps, step=at, seed=1, rank=rank, world=world)
    return list(CurriculumSampler(warm, task, first_steps, n_first, at))


def test_sampler_reads_each_first_phase_row_once_then_the_task_and_resumes_exactly():
    full = stream(first_steps=3, n_first=12, n_task=20, total=8, start=0)
    assert len(full) == 8 * 4
    assert sorted(full[:12]) == list(range(12)), "the first 3 steps read every warm-up row once"
    assert all(12 <= i < 32 for i in full[12:]), "then only the task's rows"
    plain = list(StepSampler(20, 4, 5, step=lambda: 0, seed=1))
    assert [i - 12 for i in full[12:]] == plain, "the task phase is the task's own stream from its step 0"
    for start in (1, 3, 6):
        assert stream(3, 12, 20, 8, start) == full[start * 4 :], f"resume at step {start}"
    ranks = [stream(3, 12, 20, 8, 0, rank=r, world=2) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(full), "two ranks split every global batch"


def test_data_module_first_batches_are_the_warm_up_family_then_the_task():
    task = Niah(train_len=64)
    dm = TaskDataModule(task, V, n_train=64, n_val=8, batch_size=8, seed=0, cache_dir=None,
                        curriculum=curriculum_task("mqar", task, V), curriculum_share=0.5)
    dm.trainer = SimpleNamespace(max_steps=6, max_epochs=None, world_size=1, global_rank=0, global_step=0)
    dm.setup("fit")
    assert dm.first_steps == 3 and dm.n_first == 24 and len(dm.train_set) == 24 + 64
    batches = list(dm.train_dataloader())
    assert len(batches) == 6
    for k, batch in enumerate(batches):
        has_answer_marker = (batch["input_ids"] == V.ANSWER).any(dim=1)
        if k < 3:  # MQAR rows: labels at the query keys, no QUERY/ANSWER markers
            assert not has_answer_marker.any() and ((batch["labels"] != -100).sum(dim=1) == 4).all()
        else:
            assert has_answer_marker.all() and ((batch["labels"] != -100).sum(dim=1) == 2).all()


def test_a_one_step_run_has_no_first_phase():
    assert curriculum_steps(0.6, 1) == 0 and curriculum_steps(0.6, 1000) == 600 and curriculum_steps(0.0, 50) == 0
    task = Niah(train_len=64)
    dm = TaskDataModule(task, V, 64, 8, 8, 0, None, curriculum=Mqar(train_len=64), curriculum_share=0.6)
    dm.trainer = SimpleNamespace(max_steps=1, max_epochs=None, world_size=1, global_rank=0, global_step=0)
    dm.setup("fit")
    assert dm.first_steps == 0 and len(dm.train_set) == 64


def test_each_phase_gets_its_own_warmup_and_cosine():
    optim = OptimConfig(lr=1e-3, warmup_steps=5, min_lr_ratio=0.1)
    module = LitLM(torch.nn.Linear(2, 2), optim, restart_share=0.6)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100, max_steps=100)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    expected = [1e-3 * (phase_lr(s, 60, optim) if s < 60 else phase_lr(s - 60, 40, optim)) for s in range(100)]
    assert np.allclose(lrs, expected)
    assert lrs[0] == lrs[60] == pytest.approx(1e-3 / 5) and lrs[4] == lrs[64] == pytest.approx(1e-3)
    assert lrs[59] == pytest.approx(1e-4, rel=0.05) and lrs[99] == pytest.approx(1e-4, rel=0.05)  # annealed
    plain = LitLM(torch.nn.Linear(2, 2), optim)
    plain._trainer = SimpleNamespace(estimated_stepping_batches=100, max_steps=100)
    one = plain.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert one.lr_lambdas[0](60) == pytest.approx(phase_lr(60, 100, optim))


def test_the_second_phase_starts_with_a_fresh_optimizer_state():
    optim = OptimConfig(lr=1e-3, warmup_steps=2)
    module = LitLM(torch.nn.Linear(2, 2), optim, restart_share=0.5)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, max_steps=10)
    opt = module.configure_optimizers()["optimizer"]
    module.model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert opt.state
    module._trainer = SimpleNamespace(optimizers=[opt], global_step=4)
    module.on_train_batch_start(None, 0)
    assert opt.state, "nothing happens before the boundary"
    module._trainer = SimpleNamespace(optimizers=[opt], global_step=5)
    module.on_train_batch_start(None, 0)
    assert not opt.state
