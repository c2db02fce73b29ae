"""Every command in README.md's bash blocks runs, in its smoke form, so the README cannot rot.

The smoke form is the command as written plus the documented shrink switch: ``scale=smoke`` for
``train.py`` / ``eval.py`` (two steps, a handful of examples; studies shrink their base and arms
alike), ``--quick`` for the benchmarks. Placeholders take what an earlier command of the same test
produced: ``ckpt=...`` / ``outputs/<run>/...`` the first trained checkpoint, ``multirun/<date>/<time>``
the last study's sweep. Commands that cannot run on a CPU test machine are listed in NOT_RUN (each
with the reason) or, for GPU/cluster configs, are composed and resolved (``--cfg``) instead of run.
``scripts/study.py`` runs its arms at ``scale=smoke`` into the scratch directory (never into docs/results/);
``docs/...`` paths read the committed files in place.
Commands run as subprocesses from a scratch directory, in four independent chains, two at a time.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPTS = ("train.py", "eval.py")
# Never run here: installing packages, the test suite itself, building CUDA kernels.
NOT_RUN = {
    "pip": "installs packages (this test runs in the installed environment)",
    "pytest": "is the test suite itself",
}
# Configs for hardware a CPU test machine lacks: composed and resolved (--cfg) instead of run.
COMPOSE_ONLY = {"hydra/launcher=slurm": "all", "trainer=fsdp": "job"}
# Output a user should never see (silenced at the source, issue 19).
NOISE = ("💡 Tip", "LeafSpec", "`weights_only` was not set", "Epoch 0/-2", "smaller than the logging interval",
         "in eval mode at the start of training", "Traceback")


def external_data(tokens: list[str]) -> str | None:
    """An argument naming the user's own data or model at an absolute path that this machine lacks
    (``eval.longbench.dir=/data/LongBench/data``): such a command cannot run here, as written."""
    for t in tokens:
        value = t.split("=", 1)[-1].removeprefix("hf:")
        if value.startswith("/") and not Path(value).exists():
            return value
    return None


def readme_commands(text: str | None = None) -> list[tuple[str, str]]:
    """(section, command) for each command of each ```bash block: continuations joined, comments
    dropped, ``a && b`` split into two commands."""
    text = README.read_text() if text is None else text
    out: list[tuple[str, str]] = []
    section = ""
    in_block = False
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") and not in_block:
            section = line.lstrip("#").strip()
        if line.strip().startswith("```"):
            if in_block:
                joined = "\n".join(lines).replace("\\\n", " ")
                for cmd_line in joined.splitlines():
                    cmd_line = re.sub(r"(^|\s)#.*$", "", cmd_line)  # a trailing comment
                    for part in re.split(r"\s&&\s", cmd_line):
                        if part.strip():
                            out.append((section, " ".join(part.split())))
                lines = []
            in_block = line.strip() == "```bash" if not in_block else False
            continue
        if in_block:
            lines.append(line)
    return out


def test_readme_parser_joins_continuations_and_splits_chains():
    text = "## S\n```bash\npip install x && python train.py a=1   # comment\npython eval.py \\\n    b=[1,2]\n```\n"
    assert readme_commands(text) == [("S", "pip install x"), ("S", "python train.py a=1"),
                                     ("S", "python eval.py b=[1,2]")]


class Chain:
    """Commands that share a scratch directory and run in order (later ones use earlier outputs)."""

    def __init__(self, name: str, cwd: Path) -> None:
        self.name, self.cwd = name, cwd
        self.commands: list[str] = []
        self.log: list[str] = []

    def latest(self, pattern: str, first: bool = False) -> Path:
        found = sorted(self.cwd.glob(pattern), key=lambda p: p.stat().st_mtime)
        assert found, f"{self.name}: no {pattern} under {self.cwd} for a placeholder"
        return found[0] if first else found[-1]

    def smoke_argv(self, command: str) -> tuple[list[str], dict[str, str]] | None:
        tokens = shlex.split(command)
        env = {}
        while tokens and re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", tokens[0]):
            k, v = tokens.pop(0).split("=", 1)
            env[k] = v
        if tokens[0] in NOT_RUN or (tokens[:3] == ["python", "-m", "pytest"]) or external_data(tokens):
            return None
        if tokens[0] == "scripts/gpu_check.sh":  # needs CUDA: its smoke form is the CPU dry run
            return [str(ROOT / tokens[0]), *tokens[1:], "--dry-run"], env
        assert tokens[0] == "python", f"README command not understood by the test: {command}"
        if tokens[1] == "-c":  # inline Python (e.g. writing a tiny Hugging Face model): as written
            return [sys.executable, *tokens[1:]], env
        script, args = tokens[1], tokens[2:]
        ckpt = None
        out: list[str] = []
        for a in args:
            if a.startswith("ckpt=") and (a == "ckpt=..." or "<" in a):  # a placeholder, not a real path
                # the README's first run (`python train.py`: a transformer, as the eval lines assume)
                ckpt = ckpt or self.latest("outputs/**/checkpoints/last.ckpt", first=True)
                a = f"ckpt={ckpt}"
            if "multirun/<date>/<time>" in a:
                a = str(self.latest("multirun/*/*"))
            out.append(a)
        out = [str(ROOT / a) if a.startswith("docs/") else a for a in out]  # committed rows, read in place
        if script == "scripts/study.py":  # its runs at smoke scale, their rows here, never into docs/results
            out += ["--results", str(self.cwd / "results"), "--outputs", str(self.cwd / "outputs"),
                    "--set", "scale=smoke"]
        if script in SCRIPTS:
            out.append("scale=smoke")
            for key, what in COMPOSE_ONLY.items():
                if key in out:  # --cfg cannot be combined with -m
                    out = [a for a in out if a != "-m"] + ["--cfg", what, "--resolve"]
        elif script.startswith("scripts/bench_"):
            out.append("--quick")
        return [sys.executable, str(ROOT / script), *out], env

    def run(self) -> list[str]:
        failures = []
        for command in self.commands:
            spec = self.smoke_argv(command)
            if spec is None:
                continue
            argv, extra_env = spec
            env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline",
                       LONGCTX_STUDY_DIR=str(self.cwd / "studies"), **extra_env)
            proc = subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=600)
            output = proc.stdout + proc.stderr
            self.log.append(f"$ {command}\n{output[-3000:]}")
            if proc.returncode != 0:
                failures.append(f"[{self.name}] `{command}` exited {proc.returncode}:\n{output[-3000:]}")
            noise = [n for n in NOISE if n in output]
            if noise:
                failures.append(f"[{self.name}] `{command}` printed known noise {noise}:\n{output[-2000:]}")
        for rows_file in self.cwd.rglob("results.jsonl"):
            rows = [json.loads(s) for s in rows_file.read_text().splitlines() if s.strip()]
            bad = [r.get("error") for r in rows if r.get("status") != "ok"]
            if bad:
                failures.append(f"[{self.name}] {rows_file}: rows not ok: {bad[:3]}")
        return failures


def chains(tmp_path: Path) -> list[Chain]:
    """Sections -> chains: each chain is independent of the others (own scratch directory)."""
    by_name: dict[str, Chain] = {}
    for section, command in readme_commands():
        name = {"Benchmarks": "benchmarks", "From a laptop to a cluster": "cluster"}.get(section)
        # the text section evaluates the Hugging Face model and checkpoint the section before it makes
        name = name or ("hf" if section.startswith(("Bring your own", "Text:")) else None)
        name = name or ("studies" if section.startswith("Studies") else "everyday")
        if name not in by_name:
            (tmp_path / name).mkdir()
            by_name[name] = Chain(name, tmp_path / name)
        by_name[name].commands.append(command)
    return list(by_name.values())


def _run_chains(selected: list[Chain]) -> None:
    selected.sort(key=lambda ch: -len(ch.commands))  # longest first, two at a time (the suite's CPU budget)
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f for fs in pool.map(Chain.run, selected) for f in fs]
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    """Every train.py / eval.py / collect / plot command of the README, run in smoke form (minutes;
    the default suite validates every one of them and runs the first chain, below)."""
    selected = [ch for ch in chains(tmp_path) if ch.name != "benchmarks"]
    commands = [c for ch in selected for c in ch.commands]
    assert any("train.py" in c for c in commands) and any("eval.py" in c for c in commands)
    _run_chains(selected)
    # every README command's outputs together (grid, eval=lm, eval=sinks, an imported model, studies): every
    # figure kind draws or says why it cannot; none fails
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot.py"), str(tmp_path), "--out",
                           str(tmp_path / "all_figures"), "--format", "png", "--dpi", "60"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and "FAILED" not in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


# The everyday path, run for real in the default suite: train, another family and task, evaluate the
# checkpoint under a KV policy, draw the figures.
CORE = ("python train.py", "python train.py model=mamba task=kv_retrieval",
        "python eval.py ckpt=... cache=quest cache.budget=32", "python scripts/plot.py outputs/")


def test_readme_core_commands_run(tmp_path):
    everyday = next(ch for ch in chains(tmp_path) if ch.name == "everyday")
    everyday.commands = [c for c in everyday.commands if c in CORE]
    assert len(everyday.commands) == len(CORE), everyday.commands
    _run_chains([everyday])


def _job_overrides(args: list[str]) -> list[list[str]]:
    """The jobs of a command line: one per value of each comma sweep (not their product)."""
    plain = [a for a in args if not a.startswith("-") and not a.startswith("hydra")]
    sweeps = [a for a in plain if "," in a.split("=", 1)[-1] and "[" not in a]
    fixed = [a for a in plain if a not in sweeps]
    jobs = [fixed]
    for sweep in sweeps:
        key, values = sweep.split("=", 1)
        jobs += [fixed + [f"{key}={v}"] for v in values.split(",")]
    return jobs if not sweeps else jobs[1:]


def test_every_readme_train_and_eval_command_validates(tmp_path, monkeypatch):
    """In-process and fast: each train.py / eval.py command of the README (each arm of each study,
    and each study's base model) composes at scale=smoke and passes validation."""
    import torch
    from conftest import compose_config

    from pipeline.config.resolve import validate
    from pipeline.train.base_model import base_config

    monkeypatch.setenv("LONGCTX_STUDY_DIR", str(tmp_path / "studies"))
    checked = 0
    for _, command in readme_commands():
        tokens = shlex.split(command)
        if len(tokens) < 2 or tokens[0] != "python" or tokens[1] not in SCRIPTS:
            continue
        script = tokens[1]
        if any(t.startswith("init_from=hf:") for t in tokens) or external_data(tokens):
            continue  # the model comes from a directory an earlier command writes: the slow run covers it
        for job in _job_overrides(tokens[2:]):
            job = [a for a in job if not a.startswith("ckpt=")] + ["scale=smoke"]
            # eval.py: the default checkpoint's (train.py) config with the command's overrides, as eval.py
            # builds it (pipeline.eval_run.apply_eval_overrides)
            cfg = compose_config(job, run_dir=str(tmp_path / "run"))
            arms = [[]]
            preset = next((a.split("=", 1)[1] for a in job if a.startswith("experiment=")), None)
            if preset:  # the study's own arms (hydra.sweeper.params in its yaml)
                from omegaconf import OmegaConf

                text = OmegaConf.load(ROOT / "conf" / "experiment" / f"{preset}.yaml")
                sweeper = OmegaConf.select(text, "hydra.sweeper.params") or {}
                arms = [[f"{k}={v}"] for k, vs in sweeper.items() for v in str(vs).split(",")] or [[]]
            for arm in arms:
                c = compose_config(job + arm, run_dir=str(tmp_path / "run")) if arm else cfg
                # a GPU config cannot pass this machine's accelerator check: everything else is checked
                here = str(c.trainer.get("accelerator")) in ("cpu", "auto") or torch.cuda.is_available()
                validate(c, training=here and script == "train.py")
                base = base_config(c) if script == "train.py" else None
                if base is not None:
                    validate(base, training=here)
                checked += 1
    assert checked >= 20, checked

def test_readme_benchmarks_start(tmp_path):
    """The benchmarks' --quick runs take minutes (test_readme_benchmarks_run, slow); here each README
    benchmark command at least imports and parses its arguments."""
    bench = [ch for ch in chains(tmp_path) if ch.name == "benchmarks"]
    assert bench and bench[0].commands
    for command in bench[0].commands:
        argv, _ = bench[0].smoke_argv(command)
        proc = subprocess.run([*argv[:-1], "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.returncode == 0 and "--quick" in proc.stdout, (command, proc.stderr[-2000:])


@pytest.mark.slow
def test_readme_benchmarks_run(tmp_path):
    _run_chains([ch for ch in chains(tmp_path) if ch.name == "benchmarks"])


@pytest.mark.parametrize("command", ["python train.py model.n_kv_heads=3", "python train.py cache=quest model=mamba"])
def test_config_error_is_one_message_and_leaves_no_run_dir(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    argv = [sys.executable, str(ROOT / "train.py"), *shlex.split(command)[2:]]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("config error:") and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*")), \
        list((tmp_path / "outputs").rglob("*"))


def _start(argv: list[str], cwd: Path, env: dict) -> tuple[subprocess.Popen, list[str]]:
    """A process whose output lines are collected as they come (read by a thread)."""
    import threading

    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


def _wait_for(lines: list[str], text: str, timeout: float) -> bool:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(text in line for line in list(lines)):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_writes_a_checkpoint_the_same_command_resumes_from(sig, tmp_path):
    """README: Ctrl-C (or SIGTERM) stops at the end of a step and writes checkpoints/last.ckpt first;
    the same command then resumes from it."""
    import signal
    import time

    import torch

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    argv = [sys.executable, str(ROOT / "train.py"), "run_id=intr", "scale=smoke", "trainer.max_steps=100000",
            "checkpoint_every=100000", "trainer.val_check_interval=100000", "trainer.limit_val_batches=0",
            "data.n_train=2000", "model.d_model=32", "model.n_heads=2"]
    proc, lines = _start(argv, tmp_path, env)
    assert _wait_for(lines, "Ctrl-C stops after the current step", 180), "".join(lines)[-3000:]
    time.sleep(3)  # some steps, none of them checkpointed (checkpoint_every=100000)
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=120)
    ckpt = tmp_path / "outputs" / "runs" / "intr" / "checkpoints" / "last.ckpt"
    assert proc.returncode != 0 and ckpt.exists(), "".join(lines)[-3000:]
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] > 0
    again, lines = _start(argv, tmp_path, env)
    resumed = _wait_for(lines, "resuming from", 180)
    again.terminate()
    again.wait(timeout=120)
    assert resumed, "".join(lines)[-3000:]
