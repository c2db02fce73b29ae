"""init_from=hf:PATH through the pipeline: eval.py evaluates an imported model, train.py extends one,
and scripts/export_hf.py turns the extended checkpoint back into a directory transformers loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_config

transformers = pytest.importorskip("transformers")
from models.hf import HFFormatError  # noqa: E402
from pipeline.eval_run import evaluate_checkpoint  # noqa: E402
from pipeline.run import train  # noqa: E402
from pipeline.train.checkpoint import model_state, read_checkpoint  # noqa: E402

transformers.logging.set_verbosity_error()
# tiny task settings; the model's sizes come from the directory, not from model.* overrides
EVAL_TINY = ["vocab_size=64", "task.train_len=32", "eval.lengths=[32,64]", "eval.depths=[0.5]",
             "eval.n_examples=2", "eval.batch_size=2"]
HF_TINY = EVAL_TINY + ["data.n_train=16", "data.n_val=8", "data.batch_size=4", "trainer=smoke", "logger=none"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny Llama with llama3 rope scaling, GQA and tied embeddings; vocabulary 96 >= the tasks' 64."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    path = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def run(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LONGCTX_DATA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def test_eval_py_on_an_imported_model_with_a_cache_policy(llama_dir, tmp_path):
    run(["eval.py", f"init_from=hf:{llama_dir}", "cache=sink_window", "cache.sink=2", "cache.window=16",
         *EVAL_TINY, f"hydra.run.dir={tmp_path / 'ev'}"], tmp_path)
    rows = [__import__("json").loads(line) for line in open(tmp_path / "ev" / "results.jsonl")]
    assert [r["eval_len"] for r in rows] == [32, 64] and all(r["status"] == "ok" for r in rows)
    assert all(r["model"] == "transformer" and r["pos"] == "llama3x4" and r["cache"].startswith("sink_window")
               for r in rows)


def test_train_extend_from_an_imported_model_then_export(llama_dir, tmp_path):
    """stage=extend with yarn and LoRA+ on the imported Llama; its checkpoint carries the imported architecture,
    eval.py reads it back, and export_hf.py merges the adapters and writes what transformers loads with our logits."""
    ov = HF_TINY + ["stage=extend", f"init_from=hf:{llama_dir}", "model.pos.rule=yarn", "model.pos.factor=2",
                    "task.train_len=64", "eval.lengths=[64]", "lora.enabled=true", "lora.trainable=[norm]",
                    "trainer.max_steps=2"]
    rows = train(compose_config(ov, run_dir=str(tmp_path / "ext")))
    assert rows and all(r["status"] == "ok" and r["pos"] == "yarnx2" and r["stage"] == "extend" for r in rows)
    ckpt = tmp_path / "ext" / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(ckpt)["config"]["model"]
    assert (saved["d_model"], saved["vocab_size"], saved["tie_embeddings"]) == (32, 96, True)
    assert saved["pos"]["rule"] == "yarn" and saved["pos"]["original_max_position_embeddings"] == 32
    ev = [f"ckpt={ckpt}", "eval.lengths=[64]", "eval.depths=[0.5]", "eval.n_examples=2"]
    again = evaluate_checkpoint(compose_config(ev, config_name="eval", run_dir=str(tmp_path / "ev")), ev)
    assert again[0]["status"] == "ok" and again[0]["token_accuracy"] == rows[0]["token_accuracy"]

    run(["scripts/export_hf.py", f"ckpt={ckpt}", f"out={tmp_path / 'hf'}"], tmp_path)
    from models.lora import LoraPlusConfig, apply_lora, merge_lora
    from models.registry import build_model
    from pipeline.config.resolve import build_model_config

    ours = apply_lora(build_model(build_model_config(saved)), LoraPlusConfig(enabled=True, trainable=["norm"]))
    ours.load_state_dict(model_state(read_checkpoint(ckpt)))
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in ours.state_dict().items())  # adapters trained
    ours = merge_lora(ours).eval()
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 96, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(ref(x).logits, ours(x), rtol=0, atol=1e-5)


def test_hf_import_errors_before_any_work(llama_dir, tmp_path):
    with pytest.raises(HFFormatError, match="not a directory"):
        train(compose_config(HF_TINY + [f"init_from=hf:{tmp_path / 'nope'}"], run_dir=str(tmp_path)))
    with pytest.raises(HFFormatError, match="holds a transformer model but model=mamba"):
        from pipeline.train.hf_init import with_hf_model

        ov = [f"init_from=hf:{llama_dir}", "model=mamba"]
        with_hf_model(compose_config(ov, run_dir=str(tmp_path)), ov)
    assert not (tmp_path / "checkpoints").exists()


def test_chosen_model_settings_win_over_the_imported_ones(llama_dir, tmp_path):
    """Sizes and rope come from config.json unless chosen: on the command line (even a default value),
    or by an experiment preset (a value unlike conf/model's default)."""
    from pipeline.train.hf_init import with_hf_model

    def model(ov):
        return with_hf_model(compose_config(ov, run_dir=str(tmp_path)), ov).model

    plain = model([f"init_from=hf:{llama_dir}"])
    assert (plain.d_model, plain.n_kv_heads, plain.vocab_size, plain.pos.rule, plain.pos.factor) == \
        (32, 2, 96, "llama3", 4.0)
    assert model([f"init_from=hf:{llama_dir}", "model.pos.rule=rope"]).pos.rule == "rope"  # the default, chosen
    preset = model([f"init_from=hf:{llama_dir}", "experiment=longlora"])  # sets pos linear x4
    assert (preset.pos.rule, preset.pos.factor, preset.d_model) == ("linear", 4.0, 32)
    assert plain.attention.train == "full" and plain.max_seq_len == 128  # from max_position_embeddings
