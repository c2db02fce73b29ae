"""Reliability III (issue 30): files a user hands in are untrusted input; exports never mix two models.

Each numbered attack of the issue, reproduced, and now stopped: 1 export into a sharded model's
directory, 2 a config.json claiming a huge model, 3 a shard index pointing outside the directory,
4 a truncated safetensors file / a bogus header length, 5 a truncated tokenizer.json, 6 bad input to
train.py / eval.py as one ``config error:`` line, 7-8 malformed LongBench files, 9 non-finite imported
weights, 10 $LONGCTX_PLUGINS recorded as provenance. Then the same classes of input elsewhere.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

import models.hf.weights as hf_weights
from models.hf import HFFormatError, load_model, model_fields_from, save_pretrained
from models.registry import build_model
from pipeline.config.resolve import ConfigError, build_model_config, validate
from pipeline.failures import record_failures
from pipeline.results.rows import read_rows
from pipeline.run import train
from pipeline.train.checkpoint import CheckpointError, load_weights

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = [o for o in TINY if o.startswith("model.")] + ["vocab_size=64"]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    node = OmegaConf.to_container(compose_config(MODEL).model, resolve=True)
    return build_model(build_model_config(node))


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    """A tiny transformer exported by us (config.json + model.safetensors)."""
    return save_pretrained(tiny_model(), tmp_path / "tiny")


def imported(path: Path, **kw) -> torch.nn.Module:
    return load_model(build_model_config(model_fields_from(path)), path, **kw)


def as_single_run(monkeypatch) -> None:
    """What train.py / eval.py do outside a sweep (Hydra's RUN mode)."""
    import pipeline.failures as failures

    monkeypatch.setattr(failures, "single_run", lambda: True)


def config_error_line(monkeypatch, capsys, job, cfg, *args) -> str:
    """Run ``job`` as train.py / eval.py would: it must exit 2 with one ``config error:`` line, no traceback."""
    as_single_run(monkeypatch)
    with pytest.raises(SystemExit) as done:
        record_failures(lambda c: job(c, *args))(cfg)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error:") and "\n" not in err and "Traceback" not in err, err
    return err


# --- 1. export into a directory holding another (sharded) model ---------------------------------


def shard(src: Path, dst: Path) -> Path:
    """``src``'s model as a two-shard directory with an index, as transformers writes big models."""
    dst.mkdir(parents=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, part in halves.items():
        save_file({n: state[n] for n in part}, str(dst / file))
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


def checkpoint_of(model: torch.nn.Module, path: Path) -> Path:
    """A checkpoint as train.py writes it (state_dict under ``model.``, the run config)."""
    config = {"model": OmegaConf.to_container(compose_config(MODEL).model, resolve=True)}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "config": config}, path)
    return path


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_refuses_a_non_empty_target_and_overwrite_leaves_only_the_new_model(hf_dir, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import export_hf

    out = shard(hf_dir, tmp_path / "out")  # the old model, sharded
    (out / "NOTES.md").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    new = tiny_model(seed=1)
    ckpt = checkpoint_of(new, tmp_path / "new.ckpt")
    with pytest.raises(HFFormatError, match="is not empty.*--overwrite"):
        export_hf.export(str(ckpt), str(out))
    assert sorted(p.name for p in out.iterdir()) == before  # untouched
    assert export_hf.parse([f"ckpt={ckpt}", f"out={out}", "--overwrite"])["overwrite"] is True
    export_hf.export(str(ckpt), str(out), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.md", "config.json", "model.safetensors"]
    assert same_weights(imported(out), new)  # the new weights, not the old index's
    assert not any(".tmp-" in p.name for p in tmp_path.iterdir())


def test_an_export_that_dies_half_way_leaves_the_target_as_it_was(hf_dir, tmp_path, monkeypatch):
    out = shard(hf_dir, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(state, file, metadata=None):
        Path(file).write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf_weights, "save_file", full_disk)
    for target, overwrite in ((out, True), (tmp_path / "fresh", False)):
        with pytest.raises(OSError, match="No space"):
            save_pretrained(tiny_model(seed=1), target, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny"]  # no fresh/, no temp dir


# --- 2. config.json claiming a far larger model than the files hold -------------------------------


def claims_a_huge_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    config.update(hidden_size=32768, num_hidden_layers=80, head_dim=None, intermediate_size=65536)
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    return dst


def test_stored_shapes_are_compared_on_the_meta_device_before_any_allocation(hf_dir, tmp_path, monkeypatch):
    huge = claims_a_huge_model(hf_dir, tmp_path / "huge")
    monkeypatch.setattr(torch.nn.Module, "to_empty", lambda *a, **k: pytest.fail("memory allocated for the model"))
    with pytest.raises(HFFormatError, match=r"shape mismatch: .*model.embed_tokens.weight: \(64, 32\) stored vs "
                                            r"\(64, 32768\)") as err:
        imported(huge)
    assert "missing from" in str(err.value) and "not in the model" not in str(err.value)


def test_a_huge_claimed_model_is_a_config_error_in_train_and_eval(hf_dir, tmp_path, monkeypatch, capsys):
    from pipeline.eval_run import evaluate_checkpoint

    huge = claims_a_huge_model(hf_dir, tmp_path / "huge")
    monkeypatch.setattr(torch.nn.Module, "to_empty", lambda *a, **k: pytest.fail("memory allocated for the model"))
    run = tmp_path / "run"
    ov = [f"init_from=hf:{huge}", "vocab_size=64", "task.train_len=32", "eval.lengths=[32]", "model.max_seq_len=64"]
    err = config_error_line(monkeypatch, capsys, train, compose_config(ov + ["trainer=smoke", "logger=none"],
                                                                      run_dir=str(run)))
    assert f"hf:{huge}" in err and "shape mismatch" in err
    err = config_error_line(monkeypatch, capsys, evaluate_checkpoint,
                            compose_config(ov, config_name="eval", run_dir=str(run)), ov)
    assert "shape mismatch" in err and not run.exists()


# --- 3. a shard index naming a file outside the directory -----------------------------------------


@pytest.mark.parametrize("entry", ["../../outside.safetensors", "{outside}", "sub/../../outside.safetensors"])
def test_shard_paths_outside_the_model_directory_are_refused_unopened(hf_dir, tmp_path, monkeypatch, entry):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((hf_dir / "model.safetensors").read_bytes())
    model_dir = tmp_path / "a" / "b"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text((hf_dir / "config.json").read_text())
    names = list(load_file(str(hf_dir / "model.safetensors")))
    entry = entry.format(outside=outside)
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: entry for n in names}}))
    opened = []
    real = hf_weights.safe_open
    monkeypatch.setattr(hf_weights, "safe_open", lambda f, **k: opened.append(f) or real(f, **k))
    with pytest.raises(HFFormatError, match=r"weight_map\[.*points outside the model directory"):
        imported(model_dir)
    assert not opened


def test_a_shard_index_that_is_not_one_is_named(hf_dir, tmp_path):
    for text, what in (('{"weight_map": ', "is not a shard index"), ('{"weight_map": []}', "weight_map is list"),
                       ('["x"]', "is not a shard index"), ('{"weight_map": {"a": 5}}', r"weight_map\['a'\]=5")):
        d = tmp_path / f"d{len(text)}"
        d.mkdir()
        (d / "config.json").write_text((hf_dir / "config.json").read_text())
        (d / "model.safetensors.index.json").write_text(text)
        with pytest.raises(HFFormatError, match=what) as err:
            model_fields_from(d)
        assert str(d / "model.safetensors.index.json") in str(err.value)


# --- 4. a truncated safetensors file; a header length of 2^60 -------------------------------------


@pytest.mark.parametrize("damage", ["cut in half", "header length 2^60", "not safetensors"])
def test_every_safetensors_read_error_names_the_file(hf_dir, damage):
    file = hf_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"cut in half": data[: len(data) // 2], "header length 2^60": struct.pack("<Q", 2**60) + data[8:],
                      "not safetensors": b"PK\x03\x04 a zip"}[damage])
    for load in (model_fields_from, imported):
        with pytest.raises(HFFormatError, match=f"{file} is not a readable safetensors file"):
            load(hf_dir)


def test_a_tensor_whose_bytes_cannot_be_read_is_named_with_its_file(hf_dir, monkeypatch):
    real = hf_weights.safe_open

    class Torn:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def get_tensor(self, name):
            raise RuntimeError("read past the end of the file")

    class Open:
        def __init__(self, file, **k):
            self.handle = real(file, **k)

        def __enter__(self):
            return Torn(self.handle.__enter__())

        def __exit__(self, *a):
            return self.handle.__exit__(*a)

    monkeypatch.setattr(hf_weights, "safe_open", Open)
    with pytest.raises(HFFormatError, match=rf"{hf_dir / 'model.safetensors'}: tensor 'model\.\S+' cannot be read"):
        imported(hf_dir)


# --- 5. a truncated tokenizer.json ----------------------------------------------------------------


@pytest.fixture
def tokenizer_file(tmp_path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path


def test_a_truncated_tokenizer_json_is_one_line_naming_the_file(tokenizer_file, tmp_path, monkeypatch, capsys):
    from tasks.tokenizer import HFTokenizer

    assert HFTokenizer(str(tokenizer_file.parent)).encode("a b") == [1, 2]
    tokenizer_file.write_text(tokenizer_file.read_text()[:100])
    with pytest.raises(ValueError) as err:
        HFTokenizer(str(tokenizer_file.parent))
    assert str(tokenizer_file) in str(err.value) and "\n" not in str(err.value)
    cfg = compose_config(TINY + ["task=passkey", "task.train_len=512", "eval.lengths=[512]", "model.max_seq_len=512",
                                 f"tokenizer=hf:{tokenizer_file}"], run_dir=str(tmp_path / "run"))
    line = config_error_line(monkeypatch, capsys, train, cfg)
    assert str(tokenizer_file) in line and not (tmp_path / "run").exists()


# --- 6. bad input to train.py / eval.py: one config error line, exit 2, no run directory ------------


def run_script(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **env)
    environ.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def assert_config_error(proc: subprocess.CompletedProcess, *names: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("config error:"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    for name in names:
        assert name in lines[0], lines[0]


@pytest.mark.slow
def test_a_plugin_that_is_not_there_and_a_missing_ckpt_are_config_errors(tmp_path):
    """End to end, as a user types them: no traceback, exit code 2, no run directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_script([f"{ROOT}/train.py", *TINY, "hydra.run.dir=run"], cwd, LONGCTX_PLUGINS="my_policies,nosuchmod")
    assert_config_error(proc, "$LONGCTX_PLUGINS", "'my_policies'")
    proc = run_script([f"{ROOT}/eval.py", f"ckpt={tmp_path / 'nope.ckpt'}", "hydra.run.dir=run"], cwd)
    assert_config_error(proc, f"ckpt='{tmp_path / 'nope.ckpt'}' does not exist")
    assert sorted(p.name for p in cwd.iterdir()) == []  # no run directory (and the folder itself kept)


def test_a_plugin_that_is_not_there_is_a_config_error(tmp_path, monkeypatch, capsys):
    import registries

    monkeypatch.setenv("LONGCTX_PLUGINS", "my_policies")
    monkeypatch.setattr(registries, "_plugins_loaded", False)
    line = config_error_line(monkeypatch, capsys, train, compose_config(TINY, run_dir=str(tmp_path / "run")))
    assert "$LONGCTX_PLUGINS='my_policies'" in line and not (tmp_path / "run").exists()


def test_an_hf_directory_without_config_json_or_not_there_is_a_config_error(hf_dir, tmp_path, monkeypatch, capsys):
    from pipeline.eval_run import evaluate_checkpoint

    (hf_dir / "config.json").unlink()
    run = tmp_path / "run"
    for path, what in ((hf_dir, "has no config.json"), (tmp_path / "absent", "is not a directory")):
        ov = [f"init_from=hf:{path}"]
        line = config_error_line(monkeypatch, capsys, train, compose_config(TINY + ov, run_dir=str(run)))
        assert what in line and str(path) in line
        line = config_error_line(monkeypatch, capsys, evaluate_checkpoint,
                                 compose_config(ov, config_name="eval", run_dir=str(run)), ov)
        assert what in line
    assert not run.exists()


def test_a_missing_or_corrupt_eval_ckpt_is_a_config_error(tmp_path, monkeypatch, capsys):
    from pipeline.eval_run import evaluate_checkpoint

    torn = tmp_path / "torn.ckpt"
    checkpoint_of(tiny_model(), torn)
    torn.write_bytes(torn.read_bytes()[:200])
    for ckpt, what in ((tmp_path / "nope.ckpt", "does not exist"), (torn, "is truncated or corrupt")):
        ov = [f"ckpt={ckpt}"]
        line = config_error_line(monkeypatch, capsys, evaluate_checkpoint,
                                 compose_config(ov, config_name="eval", run_dir=str(tmp_path / "run")), ov)
        assert f"ckpt='{ckpt}'" in line and what in line
    assert not (tmp_path / "run").exists()


# --- 7-8. LongBench: an empty file, null context, answers that are not a list ------------------------


FIXTURE = Path(ROOT) / "tests" / "fixtures" / "longbench"
GOOD = json.loads((FIXTURE / "trec.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("lines, message", [
    ([], r"holds no examples \(empty file\)"),
    (["", "  "], r"holds no examples \(empty file\)"),
    ([GOOD, {**GOOD, "context": None}], r"trec.jsonl:2: context=null; allowed: a string"),
    ([{**GOOD, "answers": 5}], r"trec.jsonl:1: answers=5; allowed: a non-empty list of strings"),
    ([{**GOOD, "answers": []}], "trec.jsonl:1: answers=.*allowed: a non-empty list"),
    ([{**GOOD, "answers": [None]}], "trec.jsonl:1: answers="),
    ([{**GOOD, "input": 3}], r"trec.jsonl:1: input=3"),
    ([{**GOOD, "all_classes": "Animal"}], "trec.jsonl:1: all_classes="),
    ([[1, 2]], "trec.jsonl:1 is a JSON list"),
], ids=["empty", "blank", "null-context", "answers-5", "answers-empty", "answers-null", "input-int",
        "classes-str", "list-line"])
def test_malformed_longbench_files_are_refused_naming_file_line_and_field(tmp_path, lines, message):
    from tasks.longbench import load_dataset

    (tmp_path / "trec.jsonl").write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    with pytest.raises(ValueError, match=message) as err:
        load_dataset(tmp_path, "trec")
    assert str(tmp_path / "trec.jsonl") in str(err.value)
    cfg = compose_config(["eval=longbench", f"eval.longbench.dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message):  # before any model is built: no row at all
        validate(cfg)


# --- 9. imported weights that are not finite --------------------------------------------------------


def test_nonfinite_imported_weights_are_refused_naming_them_unless_allowed(hf_dir):
    file = hf_dir / "model.safetensors"
    state = load_file(str(file))
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    state["model.norm.weight"][:] = float("inf")
    save_file(state, str(file))
    with pytest.raises(HFFormatError, match=r"2 tensor\(s\) hold NaN or inf values: \['model.layers.1.mlp.up_proj"
                                            r".weight', 'model.norm.weight'\].*allow_nonfinite") as err:
        imported(hf_dir)
    assert f"hf:{hf_dir}" in str(err.value)
    model = imported(hf_dir, allow_nonfinite=True)  # on purpose
    assert torch.isnan(model.state_dict()["layers.1.mlp.up_proj.weight"]).any()


def test_nonfinite_weights_in_a_checkpoint_or_an_export_are_refused(tmp_path):
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["norm.weight"][0] = float("nan")
    with pytest.raises(CheckpointError, match=r"ckpt=x: 1 tensor\(s\) hold NaN or inf values: \['norm.weight'\]"):
        load_weights(tiny_model(), state, source="ckpt=x")
    load_weights(model, state, source="ckpt=x", allow_nonfinite=True)
    with pytest.raises(HFFormatError, match=r"\['model.norm.weight'\]"):
        save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nonfinite_hf_weights_are_a_config_error_in_eval(hf_dir, tmp_path, monkeypatch, capsys):
    from pipeline.eval_run import evaluate_checkpoint

    file = hf_dir / "model.safetensors"
    state = load_file(str(file))
    state["model.embed_tokens.weight"][:] = float("nan")
    save_file(state, str(file))
    ov = [f"init_from=hf:{hf_dir}", "vocab_size=64", "task.train_len=32", "eval.lengths=[32]"]
    line = config_error_line(monkeypatch, capsys, evaluate_checkpoint,
                             compose_config(ov, config_name="eval", run_dir=str(tmp_path / "run")), ov)
    assert "model.embed_tokens.weight" in line and not (tmp_path / "run").exists()


# --- 10. $LONGCTX_PLUGINS runs code: the README says so, run.json, checkpoints and rows record it ----


def test_plugins_are_recorded_in_run_json_checkpoints_and_rows(tmp_path, monkeypatch):
    from pipeline.train.checkpoint import read_checkpoint

    readme = " ".join(Path(ROOT, "README.md").read_text().split())
    assert "`$LONGCTX_PLUGINS`" in readme and "imported, so its code runs" in readme
    monkeypatch.setenv("LONGCTX_PLUGINS", "plugins.toy_models, plugins.toy_pipeline")
    rows = train(compose_config(TINY + ["eval.lengths=[32]", "eval.depths=[0.5]"], run_dir=str(tmp_path)))
    modules = ["plugins.toy_models", "plugins.toy_pipeline"]
    assert json.loads((tmp_path / "run.json").read_text())["plugins"] == modules
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["plugins"] == modules
    assert rows and {r["plugins"] for r in read_rows(tmp_path / "results.jsonl")} == {",".join(modules)}


def test_a_missing_plugin_fails_every_lookup_naming_it(monkeypatch):
    import registries

    monkeypatch.setenv("LONGCTX_PLUGINS", "nosuchmod_for_test")
    monkeypatch.setattr(registries, "_plugins_loaded", False)
    for _ in range(2):  # not only the first lookup: none goes on without the plugin
        with pytest.raises(registries.PluginError, match="'nosuchmod_for_test'"):
            registries.load_plugins()
