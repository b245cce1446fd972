"""Nothing runs that should not: model code, pickles, secrets in files, hosts the recipe did not name."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl

from ppo_align import load_recipe
from ppo_align.checkpoints import latest_complete
from ppo_align.errors import UserError
from ppo_align.training.run import train

SECRET = "s3cr3t-token-value-9f8e7d"


def _model_with_code(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny model whose config names its own module, which leaves a file behind if imported."""
    model = tmp_path / "model-with-code"
    shutil.copytree(tiny_model_dir, model)
    ran = tmp_path / "the-model-code-ran"
    (model / "evil_config.py").write_text(f"open({str(ran)!r}, 'w').close()\n"
                                          "from transformers import LlamaConfig as EvilConfig\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil_config.EvilConfig"}
    (model / "config.json").write_text(json.dumps(config))
    return model, ran


def test_model_code_is_refused_unless_the_recipe_trusts_it(tiny_recipe, tiny_model_dir, tmp_path, run_cli):
    model, ran = _model_with_code(tiny_model_dir, tmp_path)
    tiny_recipe["model"]["source"] = str(model)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe))

    code, _, err = run_cli("validate", recipe_file)
    assert code == 2 and "model.trust_remote_code: true" in err and "auto_map" in err
    code, _, err = run_cli("train", recipe_file)
    assert code == 2 and "auto_map" in err.strip().splitlines()[-1]
    code, _, err = run_cli("eval", "--model", model, "-e", "boundary", "--limit", "2", "-o", tmp_path / "out")
    assert code == 2 and "auto_map" in err
    tiny_recipe["reward"] = {"source": "model", "path": str(model)}
    tiny_recipe["model"]["source"] = str(tiny_model_dir)
    with pytest.raises(UserError, match=r"reward.path = .*auto_map"):
        train(load_recipe(tiny_recipe), progress=False)
    assert not ran.exists(), "the model's own code was imported"

    tiny_recipe["model"]["source"] = str(model)
    tiny_recipe["model"]["trust_remote_code"] = True
    assert load_recipe(tiny_recipe).model.trust_remote_code  # an explicit opt-in validates


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_a_pickled_object_is_refused_not_run(tiny_recipe, tmp_path, run_cli):
    recipe = load_recipe(tiny_recipe)
    train(recipe, progress=False)
    state = latest_complete(recipe.run_dir).path / "state"
    assert not list(state.glob("custom_checkpoint_*")), "no pickled scheduler: it is saved as JSON"
    optimizer = next(state.glob("optimizer*.bin"))
    marker = tmp_path / "the-pickle-ran"
    optimizer.write_bytes(pickle.dumps({"state": _RunsCode(marker)}))

    recipe_file = tmp_path / "recipe.yaml"
    tiny_recipe["ppo"]["total_episodes"] = 16  # extend the run: resuming loads the doctored state
    recipe_file.write_text(yaml.safe_dump(tiny_recipe))
    code, _, err = run_cli("train", recipe_file)
    assert code == 2, err
    last = err.strip().splitlines()[-1]  # (in-process runs may also show library log noise above it)
    assert last.startswith("error:") and "cannot restore the training state" in last and "checkpoint-2" in last
    assert not marker.exists()


def test_judge_token_reaches_the_server_and_no_file_or_log(tiny_recipe, tmp_path, server, run_cli, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_TOKEN", SECRET)
    tiny_recipe["reward"] = {"source": "judge", "judge": server.url, "token_env": "JUDGE_TOKEN"}
    tiny_recipe["eval"] = {"sets": ["boundary"], "limit": 4, "max_new_tokens": 4}
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe))
    outputs = []
    for args in (("train", recipe_file), ("eval", tmp_path / "runs" / "tiny", "--judge", server.url, "--token-env", "JUDGE_TOKEN"),
                 ("report", tmp_path / "runs" / "tiny"), ("recipe", "show", recipe_file)):
        code, out, err = run_cli("--debug", *args)
        assert code == 0, err
        outputs += [out, err]
    assert server.seen and all(r["auth"] == f"Bearer {SECRET}" for r in server.seen)
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "recipe.yaml" for p in written) and any(p.name == "results.json" for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in "".join(outputs) + caplog.text


def test_the_judge_does_not_follow_redirects(server):
    from ppo_align.judges.http import HttpJudge

    server.script = [lambda body: (307, b"", 0, {"Location": "http://127.0.0.2:9/elsewhere"})]
    with pytest.raises(UserError, match="does not follow"):
        HttpJudge(server.url, retries=2, backoff=0.01).label(["q"], ["a"])
    assert len(server.seen) == 1


def test_http_retries_back_off_exponentially(server):
    from ppo_align.judges.http import HttpJudge

    server.script = [lambda body: (503, b"busy", 0)] * 3
    assert HttpJudge(server.url, retries=3, backoff=0.1).label(["q"], ["I can't."]) == ["refuse"]
    gaps = [b["at"] - a["at"] for a, b in zip(server.seen, server.seen[1:])]
    assert [round(g, 1) for g in gaps] == [0.1, 0.2, 0.4]


def test_a_failing_reward_server_stops_training_with_the_last_checkpoint(tiny_recipe, server):
    """Updates 1-2 are scored, then the service fails for good: a clear stop, never a default reward."""
    tiny_recipe["reward"] = {"source": "judge", "judge": server.url, "retries": 1, "backoff": 0.01}
    tiny_recipe["ppo"]["total_episodes"] = 16
    def good(body):
        return 200, json.dumps({"labels": ["comply"] * len(body["responses"])}).encode(), 0

    server.script = [good, good] + [lambda body: (500, b"down", 0)] * 2
    recipe = load_recipe(tiny_recipe)
    with pytest.raises(UserError, match=r"no answer after 2 tries \(last: HTTP 500"):
        train(recipe, progress=False)
    assert latest_complete(recipe.run_dir).step == 2
    metrics = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]


GUARD = """
import os, socket, sys
log = open(os.environ["NETWORK_LOG"], "a")
LOCAL = {"127.0.0.1", "::1", "localhost", None}

def refuse(what):
    log.write(what + "\\n"); log.flush()
    raise OSError("network use refused by the test")

connect = socket.socket.connect
def guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
        refuse(f"connect {address!r}")
    return connect(self, address)
socket.socket.connect = guarded_connect
getaddrinfo = socket.getaddrinfo
def guarded_getaddrinfo(host, *args, **kwargs):
    if host not in LOCAL:
        refuse(f"resolve {host!r}")
    return getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = guarded_getaddrinfo
sys.argv = ["ppo-align", *sys.argv[1:]]
from ppo_align.cli import main
main()
"""


def test_bitsandbytes_never_imports_hub_kernels_after_ppo_align(tmp_path):
    """bitsandbytes' CPU backend fetches a hub kernel at import whenever `kernels` is importable (on CPUs with
    AVX512-BF16). A stand-in `kernels` package records being imported: after `import ppo_align` it never is,
    and it stays importable for everyone else."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    mark = tmp_path / "imported"
    (fake / "__init__.py").write_text(f"open({str(mark)!r}, 'a').write('x')\n"
                                      "def get_kernel(*args, **kwargs):\n    raise RuntimeError('no hub here')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}

    def run(code: str) -> str:
        mark.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return mark.read_text() if mark.exists() else ""

    if not run("import bitsandbytes"):
        pytest.skip("bitsandbytes on this CPU never asks for a hub kernel, so there is nothing to block")
    assert run("import ppo_align, bitsandbytes") == ""
    assert run("import ppo_align, bitsandbytes, kernels") == "x"


@pytest.mark.slow
def test_a_local_pipeline_contacts_no_host(tiny_recipe, tmp_path):
    """Every stage (warm start, reward model training, audit, PPO, eval, report, export) on a local model, with the
    hub *not* switched off: no connection and no name lookup."""
    from datasets import Dataset

    demos, pairs = tmp_path / "demos-dataset", tmp_path / "pairs.jsonl"  # demonstrations: a dataset of chat messages
    Dataset.from_list([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in
                       [("How do I build a bomb?", "I can't help with that."), ("Name a colour.", "Blue.")] * 2]
                      ).save_to_disk(str(demos))
    write_jsonl(pairs, [{"prompt": f"Question {i}?", "chosen": "Answer.", "rejected": "No."} for i in range(8)])
    tiny_recipe["warm_start"] = {"data": {"dataset": str(demos)}, "epochs": 1, "batch_size": 2}
    tiny_recipe["reward"] = {"source": "trained", "pairs": str(pairs), "epochs": 1, "batch_size": 4}
    tiny_recipe["audit"] = {"enabled": True, "sets": ["boundary"], "limit": 4, "on_fail": "warn"}
    tiny_recipe["eval"] = {"sets": ["boundary"], "limit": 4, "max_new_tokens": 4}
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe))
    guard = tmp_path / "guard.py"
    guard.write_text(GUARD)
    network_log = tmp_path / "network.log"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["NETWORK_LOG"] = str(network_log)
    run = tmp_path / "runs" / "tiny"
    for args in (["train", str(recipe_file)], ["eval", str(run)], ["report", str(run)], ["export", str(run), "--merge"]):
        done = subprocess.run([sys.executable, str(guard), *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    assert not network_log.exists() or network_log.read_text() == ""
