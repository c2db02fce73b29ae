"""The GPU check: one command on a CUDA machine installs the kernels, runs the GPU and contract tests on
the GPU, and runs every benchmark there, writing JSON per step and a markdown summary to one folder.

    scripts/gpu_check.sh [--quick] [--out DIR] [--skip-install] [--install-timeout S] [--dry-run]

Steps, most valuable first, each with a time budget (seconds, full / quick; time a step leaves unused
passes to the next; the whole run stops at ``--budget-s``, default 570 / 225, so that it finishes within
10 / 4 minutes on one H100):

  env              GPU, driver, torch and kernel-package versions                      (5 / 5)
  install          pyproject's ``cuda`` extra, each package alone: pip install
                   --no-build-isolation with MAMBA_FORCE_BUILD / CAUSAL_CONV1D_FORCE_BUILD
                   (README); a failed or over-time build is recorded and the PyTorch
                   paths are measured instead                                          (100 / 30)
  tests_contracts  forward == decode per family and cache policy, S2-Attn causal, the
                   cache policies' byte counts, in fp32 and bf16, on the GPU
                   (pytest --device cuda)                                              (75 / 40)
  tests_gpu        python -m pytest -m gpu (kernel paths == PyTorch paths, FSDP, OOM)   (75 / 45)
  bench_attention  S2-Attn vs full attention (SDPA flash), fwd + bwd, bf16, 8k-64k     (40 / 20)
  bench_train      transformer training tokens/s and MFU, d_model 1024-2048, T 4k-32k,
                   eager and torch.compile, bf16 autocast                              (150 / 40)
  bench_decode     decode tokens/s and memory per cache policy, bf16, 32k-128k         (50 / 20)
  bench_mixers     each mixer's CUDA kernel (mamba-ssm, fla) vs our PyTorch path,
                   Mamba first, fwd + bwd, bf16                                        (35 / 10)
  bench_context    longest trainable length per method in the GPU's memory, bf16       (40 / 15)

Every step writes ``<out>/<step>.json`` ({"step", "status", "seconds", "commands", "records" ...},
status ok / failed / timeout / skipped / dry-run) and its output to ``<out>/logs/<step>.log``; a
failing step is recorded and the next one runs. ``<out>/summary.md`` tables every step and record.
Without CUDA it exits at once (status 2) with the reason. ``--dry-run`` runs every step's logic on the
CPU at tiny sizes: the GPU commands are printed and recorded, tiny CPU versions of them are run (the
install is never run), so tests/test_gpu_check.py can check the whole pipeline without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
NO_CUDA = 2  # exit status without a CUDA device (and not --dry-run)

# The contract tests that take --device (tests/conftest.py): every family's and cache policy's decode
# equals its forward, S2-Attn and every pattern are causal, caches report their bytes.
CONTRACT_TESTS = (
    "tests/test_model_contracts.py",
    "tests/test_transformer.py::test_decode_through_full_cache_equals_teacher_forced",
    "tests/test_mamba.py::test_forward_equals_step_decode_and_prefill_then_step",
    "tests/test_mamba.py::test_changing_a_token_never_changes_earlier_logits",
    "tests/test_mixers_linear.py::test_forward_equals_step_decode_and_prefill_then_step",
    "tests/test_mixers_linear.py::test_changing_a_token_never_changes_earlier_logits",
    "tests/test_longlora.py::test_model_with_s2_attn_is_causal_and_trains",
    "tests/test_bf16.py",  # the same, with a bf16 model and under bf16 autocast, against float32
)
# import name of each package of the cuda extra; install order (mamba-ssm builds against causal-conv1d)
IMPORT_NAMES = {"causal-conv1d": "causal_conv1d", "mamba-ssm": "mamba_ssm", "flash-linear-attention": "fla"}
INSTALL_ORDER = ("causal-conv1d", "mamba-ssm", "flash-linear-attention")


@dataclass
class Run:
    """What one invocation asked for."""

    out: Path
    mode: str  # full | quick | dry
    skip_install: bool = False
    install_timeout: float | None = None
    env: dict = field(default_factory=dict)  # cuda_summary() of the machine (probe())

    @property
    def gpu_mem_gb(self) -> float:
        """Total memory of the GPU (bench_context's budget); 0 without one."""
        return float(self.env.get("gpu_mem_gb") or 0.0)

    def pick(self, full, quick, dry):
        return {"full": full, "quick": quick, "dry": dry}[self.mode]


@dataclass
class Step:
    name: str
    budget: tuple[float, float]  # seconds: full, quick (dry runs get the quick budget)
    run: Callable[[Run, float, dict], dict]  # (run, seconds allowed, the step's record) -> the record


@dataclass
class Result:
    returncode: int | None  # None: killed at its time limit
    seconds: float
    output: str = field(repr=False, default="")


def run_command(argv: list[str], timeout: float, log: Path, env: dict | None = None) -> Result:
    """Run ``argv`` from the repository root, output appended to ``log``; past ``timeout`` seconds its
    whole process group is stopped (SIGTERM, then SIGKILL) and returncode is None."""
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": path, **(env or {})})
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            stop_group(proc)
            code = None
    output = log.read_text(errors="replace")
    return Result(code, time.perf_counter() - start, output)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group started for ``proc`` (a build's compilers, a test's workers), ten
    seconds to exit, then SIGKILL to whatever of the group is left."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------- env


def cuda_summary() -> dict:
    import torch

    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_mem_gb=props.total_memory / 2**30,
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    return info


def probe() -> dict:
    """cuda_summary() from a child process: this one never creates a CUDA context, so the benchmarks
    it starts have the whole GPU."""
    code = "import json, gpu_check; print(json.dumps(gpu_check.cuda_summary()))"
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), str(ROOT)])})
    if proc.returncode:
        return {"probe_error": tail(proc.stderr, 3)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "triton", *INSTALL_ORDER, "transformers", "lightning"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def step_env(run: Run, allowed: float, record: dict) -> dict:
    record["env"] = dict(run.env) | {"packages": package_versions()}
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=min(allowed, 30))
        record["env"]["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    record["env"]["commit"] = git.stdout.strip() or None
    return record | {"status": "ok"}


# ---------------------------------------------------------------- install


def load_toml(text: str) -> dict:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # 3.10: the copy pip vendors
        from pip._vendor import tomli as tomllib
    return tomllib.loads(text)


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].strip().lower()


def cuda_extra(pyproject: str | None = None) -> list[str]:
    """The requirements of pyproject's ``cuda`` extra, in build order (whatever it lists today)."""
    text = (ROOT / "pyproject.toml").read_text() if pyproject is None else pyproject
    extra = load_toml(text)["project"]["optional-dependencies"]["cuda"]
    order = {n: i for i, n in enumerate(INSTALL_ORDER)}
    return sorted(extra, key=lambda spec: order.get(requirement_name(spec), len(order)))


def imports(module: str) -> str | None:
    """None if ``module`` imports in a fresh interpreter (as the later steps will), else the error."""
    proc = subprocess.run([PY, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return None if proc.returncode == 0 else (tail(proc.stderr, 1) or f"exit {proc.returncode}")


def build_env(gpu: dict) -> dict[str, str]:
    """The README's source-build flags, all cores, and only this GPU's architecture (where the package's
    build honours TORCH_CUDA_ARCH_LIST; it is a speed-up, not a requirement)."""
    env = {"MAMBA_FORCE_BUILD": "TRUE", "CAUSAL_CONV1D_FORCE_BUILD": "TRUE", "MAX_JOBS": str(os.cpu_count() or 4)}
    if gpu.get("capability"):
        env["TORCH_CUDA_ARCH_LIST"] = gpu["capability"]
    return env


def step_install(run: Run, allowed: float, record: dict) -> dict:
    """Each package of the cuda extra that does not import yet: one pip install, in the time left."""
    env = build_env(run.env)
    record["build_env"] = env
    packages = []
    tools = [PY, "-m", "pip", "install", "ninja", "packaging", "wheel", "setuptools"]  # ninja: parallel nvcc
    tools_ready = False  # the build tools --no-build-isolation expects from this environment
    deadline = time.perf_counter() + (run.install_timeout or allowed)
    for spec in cuda_extra():
        name = requirement_name(spec)
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        argv = [PY, "-m", "pip", "install", "--no-build-isolation", spec]
        entry = {"package": spec, "module": module, "command": " ".join(f"{k}={v}" for k, v in env.items())
                 + " " + shown(argv)}
        record["commands"].append(entry["command"])
        if run.mode == "dry":
            if not tools_ready:
                print(f"  on a GPU, once something builds: {shown(tools)}")
                tools_ready = True
            print(f"  on a GPU: {entry['command']}")
            packages.append(entry | {"status": "dry-run"})
            continue
        if run.skip_install:
            packages.append(entry | {"status": "skipped", "why": "--skip-install"})
            continue
        missing = imports(module)
        if missing is None:
            packages.append(entry | {"status": "present"})
            continue
        left = deadline - time.perf_counter()
        if left < 5:
            packages.append(entry | {"status": "timeout", "why": f"no install time left ({missing})"})
            continue
        if not tools_ready:
            record["commands"].append(shown(tools))
            run_command(tools, min(left, 120), run.out / "logs" / "install.log")
            tools_ready = True
            left = deadline - time.perf_counter()
        res = run_command(argv, left, run.out / "logs" / "install.log", env)
        status = "timeout" if res.returncode is None else ("ok" if res.returncode == 0 else "failed")
        why = None
        if status == "ok":
            why = imports(module)  # built, but does it load (CUDA/torch ABI)?
            status = "ok" if why is None else "failed"
        elif status == "timeout":
            why = (f"still building after {res.seconds:.0f} s (a source build of the kernels takes ~10-30 min; "
                   "run scripts/gpu_check.sh --install-timeout 3600 once, pip's cache keeps the wheel)")
        else:
            why = tail(res.output, 3)
        packages.append(entry | {"status": status, "seconds": round(res.seconds, 1), "why": why})
    record["packages"] = packages
    bad = [p for p in packages if p["status"] in ("failed", "timeout")]
    status = "dry-run" if run.mode == "dry" else ("failed" if bad else "ok")
    if bad:
        record["error"] = "; ".join(f"{p['package']}: {p['status']}" for p in bad) + " (PyTorch paths measured)"
    return record | {"status": status}


# ---------------------------------------------------------------- tests


def junit_counts(path: Path) -> dict:
    """Counts and the failing tests (id + first line of the message) from pytest's --junitxml."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failing = []
    for case in root.iter("testcase"):
        for bad in [*case.findall("failure"), *case.findall("error")]:
            message = (bad.get("message") or bad.text or "").strip().splitlines()
            failing.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:300] if message else ''}")
    return counts | {"failing": failing}


def gpu_test_files() -> list[str]:
    """The test files holding ``gpu``-marked tests: ``pytest -m gpu`` over these is ``pytest -m gpu`` over
    the suite, without importing every other test module."""
    return sorted(f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())


def pytest_step(name: str, args: Callable[[], list[str]]) -> Callable[[Run, float, dict], dict]:
    """pytest on ``args()`` (``{device}``: cuda, or cpu in a dry run), results read from its junit XML."""

    def step(run: Run, allowed: float, record: dict) -> dict:
        xml = run.out / f"{name}.xml"
        argv = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *args()]
        on = lambda device: [a.replace("{device}", device) for a in argv]  # noqa: E731
        return execute(run, name, record, allowed, on("cpu" if run.mode == "dry" else "cuda"),
                       lambda: junit_result(xml), gpu_argv=on("cuda"))

    return step


def junit_result(xml: Path) -> dict:
    counts = junit_counts(xml)
    return {"tests": counts, "ok": counts["tests"] > 0 and not counts["failures"] and not counts["errors"]}


# ---------------------------------------------------------------- benchmarks


def bench_step(script: str, args: Callable[[Run], list[str]]) -> Callable[[Run, float, dict], dict]:
    """A scripts/bench_*.py run writing ``<out>/<step>.records.json``; on a timeout, the records the
    script had written so far are kept (status timeout)."""

    def step(run: Run, allowed: float, record: dict) -> dict:
        name = record["step"]
        path = run.out / f"{name}.records.json"
        argv = [PY, f"scripts/{script}", *args(run), "--json", str(path)]
        gpu = [PY, f"scripts/{script}", *args(dataclasses.replace(run, mode="full")), "--json", str(path)]
        return execute(run, name, record, allowed, argv, lambda: bench_result(path), gpu_argv=gpu)

    return step


def bench_result(path: Path) -> dict:
    records = json.loads(path.read_text())
    return {"records": records, "ok": bool(records) and not any("error" in r for r in records)}


def shown(argv: list[str]) -> str:
    return shlex.join(argv).replace(PY, "python")


def execute(run: Run, name: str, record: dict, allowed: float, argv: list[str], parse: Callable[[], dict],
            gpu_argv: list[str]) -> dict:
    """Run one step's command within ``allowed`` seconds and parse what it wrote. A dry run prints and
    records the (full-size) GPU command, then runs the tiny CPU ``argv``."""
    if run.mode == "dry":
        record["gpu_commands"] = [shown(gpu_argv)]
        print(f"  on a GPU: {shown(gpu_argv)}")
    command = shown(argv)
    record["commands"].append(command)
    print(f"  {'dry run, on CPU' if run.mode == 'dry' else 'running'}: {command}", flush=True)
    res = run_command(argv, allowed, run.out / "logs" / f"{name}.log")
    record.update(returncode=res.returncode, log=f"logs/{name}.log")
    try:
        parsed = parse()
    except (OSError, ValueError, ET.ParseError) as err:
        parsed = {"ok": False, "parse_error": f"{type(err).__name__}: {err}"}
    ok = parsed.pop("ok")
    record.update(parsed)
    if res.returncode is None:
        record["error"] = f"stopped at its time limit ({allowed:.0f} s); what it wrote before is kept"
        return record | {"status": "timeout"}
    if res.returncode != 0 or not ok:
        record["error"] = f"exit {res.returncode}: " + tail(res.output, 12)
        return record | {"status": "failed"}
    return record | {"status": "dry-run" if run.mode == "dry" else "ok"}


def train_args(run: Run) -> list[str]:
    common = ["--baseline", "eager", "--modes", "eager", "compiled"]
    return common + run.pick(
        ["--device", "cuda", "--dtype", "bfloat16", "--d-model", "1024", "2048", "--layers", "4", "--vocab", "32000",
         "--lengths", "4096", "32768", "--batch-tokens", "32768", "--steps", "5"],
        ["--device", "cuda", "--dtype", "bfloat16", "--d-model", "1024", "--layers", "4", "--vocab", "32000",
         "--lengths", "4096", "32768", "--batch-tokens", "32768", "--steps", "3"],
        ["--device", "cpu", "--d-model", "32", "--layers", "1", "--vocab", "64", "--lengths", "32",
         "--batch-tokens", "64", "--steps", "1", "--compile-backend", "eager", "--peak-tflops", "1"])


def attention_args(run: Run) -> list[str]:
    return run.pick(["--device", "cuda", "--lengths", "8192", "16384", "32768", "65536", "--repeats", "3"],
                    ["--device", "cuda", "--lengths", "8192", "65536", "--repeats", "2"],
                    ["--device", "cpu", "--lengths", "64", "--heads", "2", "--head-dim", "8", "--repeats", "1"])


def decode_args(run: Run) -> list[str]:
    gpu = ["--device", "cuda", "--dtype", "bfloat16", "--d-model", "1024", "--layers", "8", "--heads", "8"]
    return run.pick(gpu + ["--lengths", "32768,65536,131072", "--steps", "32", "--repeats", "2"],
                    gpu + ["--lengths", "32768,131072", "--steps", "16", "--repeats", "1"],
                    ["--device", "cpu", "--d-model", "16", "--heads", "2", "--lengths", "32,64", "--steps", "2",
                     "--repeats", "1"])


def mixers_args(run: Run) -> list[str]:
    # the families with a kernel knob, Mamba first (a run stopped at its limit keeps the families it finished)
    gpu = ["--kernels", "--device", "cuda", "--dtype", "bfloat16", "--d-model", "1024", "--layers", "4", "--batch", "4"]
    return run.pick(gpu + ["--lengths", "2048,8192", "--mixers", "mamba,gated_deltanet,mamba2,gla,retention"],
                    gpu + ["--lengths", "4096", "--quick", "--mixers", "mamba,gated_deltanet"],
                    ["--kernels", "--device", "cpu", "--d-model", "32", "--layers", "1", "--lengths", "32", "--quick",
                     "--mixers", "mamba,gated_deltanet"])


def context_args(run: Run) -> list[str]:
    # the budget: what the GPU holds, less what the CUDA context and allocator keep for themselves
    gpu = ["--device", "cuda", "--dtype", "bfloat16", "--mem-gb", f"{max(run.gpu_mem_gb * 0.9, 1):.1f}",
           "--d-model", "1024", "--layers", "4", "--heads", "8", "--vocab", "512", "--step", "4096",
           "--max-len", "131072", "--plot", str(run.out / "context.png")]
    # most telling first: a run stopped at its limit keeps the methods it finished
    return run.pick(gpu + ["--methods", "full_ft", "longlora", "mamba", "lora", "hybrid", "full_ft+ckpt",
                           "longlora+ckpt"],
                    gpu + ["--methods", "full_ft", "longlora", "mamba"],
                    ["--device", "cpu", "--methods", "full_ft", "mamba", "--mem-gb", "0.001", "--d-model", "16",
                     "--layers", "1", "--step", "16", "--max-len", "64"])  # (its plot: tests/test_bench_context.py)


STEPS = (
    Step("env", (5, 5), step_env),
    Step("install", (100, 30), step_install),
    Step("tests_contracts", (75, 40),
         pytest_step("tests_contracts", lambda: ["--device", "{device}", *CONTRACT_TESTS])),
    Step("tests_gpu", (75, 45), pytest_step("tests_gpu", lambda: ["-m", "gpu", *gpu_test_files()])),
    Step("bench_attention", (40, 20), bench_step("bench_attention.py", attention_args)),
    Step("bench_train", (150, 40), bench_step("bench_train.py", train_args)),
    Step("bench_decode", (50, 20), bench_step("bench_decode.py", decode_args)),
    Step("bench_mixers", (35, 10), bench_step("bench_mixers.py", mixers_args)),
    Step("bench_context", (40, 15), bench_step("bench_context.py", context_args)),
)


# ---------------------------------------------------------------- summary


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_markdown(records: list[dict], env: dict) -> str:
    lines = ["# GPU check", ""]
    if env:
        gpu = env.get("gpu") or "no CUDA device"
        lines += [f"{gpu}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); commit {env.get('commit')}", ""]
    lines += ["| step | status | seconds | budget s | result |", "|---|---|---|---|---|"]
    for r in records:
        if "tests" in r:
            t = r["tests"]
            result = f"{t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped"
        elif "packages" in r:
            result = ", ".join(f"{p['package']}: {p['status']}" for p in r["packages"])
        elif "env" in r:
            versions = r["env"].get("packages", {})
            result = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k not in ("lightning",))
        else:
            result = f"{len(r.get('records', []))} records"
        if r.get("error"):
            result += " — " + r["error"].splitlines()[0][:200]
        lines.append(f"| {r['step']} | {r['status']} | {r['seconds']:.1f} | {r['budget_s']:.0f} | {result} |")
    for r in records:
        failing = r.get("tests", {}).get("failing")
        if failing:
            lines += ["", f"## {r['step']}: failing tests", ""] + [f"- {f}" for f in failing]
        if r.get("records"):
            lines += ["", f"## {r['step']}", "", "| name | baseline | value | ratio | unit |", "|---|---|---|---|---|"]
            for rec in r["records"]:
                if "error" in rec:
                    lines.append(f"| {rec['name']} | error | {rec['error'][:120]} | | |")
                else:
                    lines.append(f"| {rec['name']} | {fmt(rec.get('baseline'))} | {fmt(rec.get('value'))} | "
                                 f"{fmt(rec.get('ratio'))} | {rec.get('unit', '')} |")
    lines += ["", "MFU = model FLOP/s / the GPU's dense bf16 peak; model FLOPs per token = 6 N + 6 n_layers d_attn T "
              "(scripts/bench_train.py). Each step's JSON and log are beside this file.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="output folder (default ./gpu_check/<UTC time>)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes: within 4 minutes on one H100")
    ap.add_argument("--dry-run", action="store_true", help="every step's logic on CPU at tiny sizes (no install)")
    ap.add_argument("--skip-install", action="store_true", help="measure what is installed now")
    ap.add_argument("--install-timeout", type=float, default=None,
                    help="seconds for the install step (default: its budget; a kernel source build takes longer)")
    ap.add_argument("--budget-s", type=float, default=None, help="whole-run limit (default 570, quick 225)")
    ap.add_argument("--steps", nargs="+", choices=[s.name for s in STEPS], default=None, help="a subset, in order")
    args = ap.parse_args(argv)
    if args.install_timeout is not None and args.install_timeout <= 0:
        ap.error(f"--install-timeout={args.install_timeout} must be > 0")
    if args.budget_s is not None and args.budget_s <= 0:
        ap.error(f"--budget-s={args.budget_s} must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
              "this check needs an NVIDIA GPU. Use --dry-run to exercise it on CPU.", file=sys.stderr)
        return NO_CUDA
    mode = "dry" if args.dry_run else ("quick" if args.quick else "full")
    out = Path(args.out or Path("gpu_check") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out=out, mode=mode, skip_install=args.skip_install, install_timeout=args.install_timeout, env=probe())
    budget = args.budget_s or (570.0 if mode == "full" else 225.0)
    deadline = time.perf_counter() + budget
    print(f"gpu_check ({mode}) -> {out}; whole-run limit {budget:.0f} s", flush=True)
    records, banked, env = [], 0.0, dict(run.env)
    for step in STEPS:
        if args.steps and step.name not in args.steps:
            continue
        own = step.budget[0] if mode == "full" else step.budget[1]
        explicit = step.name == "install" and args.install_timeout is not None
        if explicit:  # asked for: the build may run past the whole-run limit, which moves with it
            own = allowed = args.install_timeout
        else:
            allowed = min(own + banked, deadline - time.perf_counter() - 2)
        record = {"step": step.name, "mode": mode, "budget_s": own, "commands": []}
        start = time.perf_counter()
        print(f"[{step.name}] up to {allowed:.0f} s", flush=True)
        if allowed < 3:
            record |= {"status": "skipped", "error": "out of time (whole-run limit reached)"}
        else:
            try:
                record = step.run(run, allowed, record)
            except Exception as err:  # noqa: BLE001 - a broken step is recorded; the others still run
                record |= {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        record["seconds"] = round(time.perf_counter() - start, 2)
        if explicit:
            deadline += record["seconds"]
        else:  # what this step left unused passes on
            banked = max(0.0, own + banked - record["seconds"])
        env = record.get("env", env)
        (out / f"{step.name}.json").write_text(json.dumps(record, indent=1, default=str))
        records.append(record)
        print(f"[{step.name}] {record['status']} in {record['seconds']:.1f} s"
              + (f": {record['error'].splitlines()[0][:200]}" if record.get("error") else ""), flush=True)
    (out / "summary.md").write_text(summary_markdown(records, env))
    (out / "summary.json").write_text(json.dumps(
        [{k: r.get(k) for k in ("step", "status", "seconds", "budget_s", "error")} for r in records], indent=1))
    print(f"wrote {out / 'summary.md'}")
    bad = [r["step"] for r in records if r["status"] in ("failed", "timeout")]
    if bad:
        print(f"steps not ok: {bad} (see their JSON and logs)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
