import os
import sys

import pytest
import torch

import pipeline.config.resolvers  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# --- test-only plugins: every module of tests/plugins is imported once; each registers toy variants ---
# (a toy stage, a toy task family, a toy rule / pattern / cache policy / mixer ...), so the
# registry-parametrized contract tests pick them up with no other edit.
import importlib  # noqa: E402
import pkgutil  # noqa: E402

for _plugin in pkgutil.iter_modules([os.path.join(ROOT, "tests", "plugins")]):
    importlib.import_module(f"plugins.{_plugin.name}")
# --- end of test-only plugins ---


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors and decode steps: with 2 shared cores, intra-op threads spin-wait and run far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser):
    parser.addoption(
        "--device", default=os.environ.get("LONGCTX_TEST_DEVICE", "cpu"),
        help="device of the device-aware contract tests (forward == decode per family and cache policy, "
             "S2-Attn causal): cpu (default) or cuda[:N]; also LONGCTX_TEST_DEVICE. Used by scripts/gpu_check.py")


def pytest_configure(config):
    device = config.getoption("--device")
    if not device.startswith(("cpu", "cuda")):
        raise pytest.UsageError(f"--device={device!r}: allowed cpu or cuda[:N]")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise pytest.UsageError(f"--device={device} but torch sees no CUDA device "
                                    f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        # the contracts compare two fp32 paths at 1e-5: TF32 (cuDNN's default for convolutions) would
        # fail them by rounding, not by a bug
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    os.environ["LONGCTX_TEST_DEVICE"] = device  # target_device() reads it, also in helpers outside fixtures


def target_device() -> torch.device:
    """The device the device-aware tests build their models and inputs on (``--device``)."""
    return torch.device(os.environ.get("LONGCTX_TEST_DEVICE", "cpu"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


CONF_DIR = os.path.join(ROOT, "conf")


def compose_config(overrides: list[str], config_name: str = "config", run_dir: str | None = None):
    """Compose a Hydra config as train.py would, outside @hydra.main (for tests)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        if run_dir is not None:
            cfg.run_dir = run_dir
        if "data" in cfg:
            cfg.data.cache_dir = os.path.join(run_dir or "/tmp", "data_cache") if run_dir else None
    return cfg


TINY = [
    "model.d_model=32", "model.n_heads=2", "model.n_layers=2", "vocab_size=64", "task.train_len=32",
    "data.n_train=64", "data.n_val=16", "data.batch_size=8", "eval.lengths=[32,48]", "eval.depths=[0.0,1.0]",
    "eval.n_examples=4", "eval.batch_size=4", "trainer=smoke", "logger=none",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
