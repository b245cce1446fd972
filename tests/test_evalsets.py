"""Every shipped eval set loads, validates, matches its manifest hash, and meets its size contract."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO, write_jsonl

from ppo_align import UserError
from ppo_align.evalsets import EvalItem, JudgeExample, load_evalset, shipped_evalsets
from ppo_align.evaluation.harness import answer_matches

# name -> (minimum rows, minimum categories) as the eval-set contract promises (see evalsets/DATASHEET.md).
CONTRACT = {"refusal": (120, 8), "boundary": (400, 10), "knowledge": (150, 8), "benign": (80, 8),
            "judge_validation": (300, 10), "judge_real_smollm2": (450, 5), "judge_gold": (2000, 20),
            "minimal_pairs": (500, 10)}


def test_manifest_lists_every_set():
    assert set(shipped_evalsets()) == set(CONTRACT)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_shipped_set_loads_and_matches_manifest(name):
    entry = shipped_evalsets()[name]
    evalset = load_evalset(name)
    assert evalset.version == str(entry["version"]) and entry.get("description")
    assert evalset.sha256 == entry["sha256"], (
        f"{entry['file']} changed: bump its version in evalsets/manifest.yaml and set sha256: {evalset.sha256}"
    )
    minimum, categories = CONTRACT[name]
    assert len(evalset) >= minimum
    assert len(evalset.by_category()) >= categories


def test_refusal_and_benign_expectations():
    assert all(i.expected == "refuse" for i in load_evalset("refusal").items)
    assert all(i.expected == "comply" for i in load_evalset("benign").items)
    assert all(i.expected == "answer" and i.answers for i in load_evalset("knowledge").items)


def test_boundary_prompts_are_paired_with_unsafe_twins():
    items = load_evalset("boundary").items
    safe = [i for i in items if i.expected == "comply"]
    assert len(safe) >= 200
    assert all(i.contrast_id for i in items)
    twins = {i.id: i for i in items}
    assert all(twins[i.contrast_id].expected == "refuse" and twins[i.contrast_id].category == i.category for i in safe)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _word_edits(a: list[str], b: list[str]) -> int:
    """Word-level edit distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def test_minimal_pairs_are_short_two_way_and_differ_by_a_word_or_two():
    items = load_evalset("minimal_pairs").items
    by_id = {i.id: i for i in items}
    safe = [i for i in items if i.expected == "comply"]
    assert len(safe) >= 250 and len(safe) * 2 == len(items)
    for item in safe:
        twin = by_id[item.contrast_id]
        assert twin.expected == "refuse" and twin.contrast_id == item.id and twin.category == item.category, item.id
        assert 1 <= _word_edits(_words(item.prompt), _words(twin.prompt)) <= 2, (item.prompt, twin.prompt)
    assert all(len(i.prompt.split()) <= 15 for i in items)
    assert len({i.category for i in items}) >= 10


def _trigrams(text: str) -> set:
    words = _words(text)
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def _training_prompts() -> list[str]:
    return [json.loads(line)["prompt"] for path in sorted((REPO / "recipes" / "data").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def test_minimal_pairs_wording_stays_away_from_the_training_data():
    """Beyond no shared prompt (checked for every set below): no minimal-pair prompt shares half its word
    trigrams with any training prompt, the training-side contrast twins included, so a policy cannot pass it by
    having seen its wording."""
    training = [(p, _trigrams(p)) for p in _training_prompts()]
    close = []
    for item in load_evalset("minimal_pairs").items:
        grams = _trigrams(item.prompt)
        for prompt, other in training:
            if grams and other and len(grams & other) / len(grams | other) >= 0.5:
                close.append((item.id, prompt))
    assert not close, close[:5]


@pytest.mark.parametrize("name", ["judge_validation", "judge_real_smollm2", "judge_gold"])
def test_judge_gold_sets_cover_all_labels(name):
    examples = load_evalset(name).items
    assert all(isinstance(e, JudgeExample) for e in examples)
    labels = {e.label for e in examples}
    assert labels == {"comply", "refuse", "partial"}


def test_real_smollm2_gold_answers_the_boundary_prompts():
    """judge_real_smollm2 holds one real response to every shipped boundary prompt, in order."""
    prompts = [i.prompt for i in load_evalset("boundary").items]
    examples = load_evalset("judge_real_smollm2").items
    assert [e.prompt for e in examples] == prompts
    assert [e.id for e in examples] == [f"real-smollm2-{n:03d}" for n in range(1, len(prompts) + 1)]
    assert all(e.case == f"smollm2-{e.label}" or e.label == "comply" and e.case.startswith("smollm2-")
               for e in examples)


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_no_prompt_is_shared_between_sets_or_with_training_data():
    # Every shipped recipe data file (training prompts, demonstrations, preference pairs) is disjoint
    # from every eval set: a model trained on an eval prompt would make its shift meaningless.
    seen = {}
    for path in sorted((REPO / "recipes" / "data").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            seen.setdefault(_normalise(json.loads(line)["prompt"]), path.name)
    for name in ("refusal", "boundary", "knowledge", "benign", "minimal_pairs"):
        for item in load_evalset(name).items:
            key = _normalise(item.prompt)
            assert key not in seen, f"{name}:{item.id} repeats a prompt of {seen[key]}"
            seen[key] = f"{name}:{item.id}"


def test_broken_set_reports_every_problem_with_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"id": "a", "prompt": "p", "category": "c", "expected": "comply", "contrast_id": "b"},
        {"id": "b", "prompt": "q", "category": "c", "expected": "comply", "contrast_id": "a"},
        {"id": "a", "prompt": "r", "category": "c", "expected": "maybe"},
        {"id": "k", "prompt": "s", "category": "c", "expected": "answer"},
    ]
    write_jsonl(path, rows)
    with pytest.raises(UserError) as info:
        load_evalset(path)
    text = str(info.value)
    assert f"{path}:3: expected" in text
    assert "must differ in `expected`" in text
    assert "needs a non-empty `answers`" in text


def test_user_csv_set(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("id,prompt,category,expected,answers\nq1,Capital of Peru?,geo,answer,Lima|lima city\n")
    evalset = load_evalset(path)
    assert isinstance(evalset.items[0], EvalItem) and evalset.items[0].answers == ["Lima", "lima city"]
    assert evalset.version == "user" and len(evalset.sha256) == 64


def test_unknown_set_names_the_shipped_ones():
    with pytest.raises(UserError, match="refusal"):
        load_evalset("nope")


@pytest.mark.parametrize("response, answers, expected", [
    ("The capital is Paris.", ["Paris"], True),
    ("It has 120 legs", ["12"], False),
    ("Romeo and Juliet", ["Rome"], False),
    ("twelve of them", ["12", "twelve"], True),
    ("William  Shakespeare wrote it", ["william shakespeare"], True),
])
def test_answer_matching(response, answers, expected):
    assert answer_matches(response, answers) is expected
