"""Datasets: prompt files, malformed lines, the held-out split, building and refusing datasets."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from ppdecode.models import load_model
from ppdecode.train import sources
from ppdecode.train.data import (
    HELDOUT,
    TRAIN,
    DataConfig,
    build_dataset,
    draw_cuts,
    load_dataset,
    split_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompt_file_formats(tmp_path):
    sharegpt = _write(
        tmp_path / "a.jsonl",
        [
            json.dumps(
                {
                    "conversations": [
                        {"from": "system", "value": "be nice"},
                        {"from": "human", "value": "Hi there"},
                        {"from": "gpt", "value": "x"},
                    ]
                }
            )
        ],
    )
    alpaca = _write(
        tmp_path / "b.jsonl",
        [
            json.dumps({"instruction": "Sort this", "input": "3 1 2"}),
            json.dumps({"instruction": "Say hi", "input": ""}),
        ],
    )
    plain = _write(tmp_path / "c.jsonl", [json.dumps({"prompt": "Tell me a joke"}), ""])
    array = tmp_path / "d.json"
    array.write_text(json.dumps([{"prompt": "one"}, {"instruction": "two"}]))
    text = _write(
        tmp_path / "e.txt", ["First paragraph of a text file.", "", "Second paragraph, also long enough."]
    )
    assert [p.text for p in sources.read_prompt_file(sharegpt)] == ["Hi there"]
    assert [p.text for p in sources.read_prompt_file(alpaca)] == ["Sort this\n\n3 1 2", "Say hi"]
    assert [p.text for p in sources.read_prompt_file(plain)] == ["Tell me a joke"]
    assert [p.text for p in sources.read_prompt_file(array)] == ["one", "two"]
    assert len(sources.read_prompt_file(text)) == 2
    assert sources.read_prompt_file(plain)[0].source == "file:c.jsonl"


def test_malformed_lines_are_reported_with_line_numbers(tmp_path):
    path = _write(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"prompt": "fine"}),
            "{not json",
            json.dumps({"prompt": "also fine"}),
            json.dumps({"text": "no known field"}),
            json.dumps({"conversations": [{"from": "gpt", "value": "no human turn"}]}),
        ],
    )
    with pytest.raises(ValueError) as err:
        sources.read_prompt_file(path)
    message = str(err.value)
    assert "3 malformed lines" in message and "--skip-bad" in message
    assert f"{path}:2:" in message and f"{path}:4:" in message and f"{path}:5:" in message
    assert f"{path}:1:" not in message and f"{path}:3:" not in message
    assert [p.text for p in sources.read_prompt_file(path, skip_bad=True)] == ["fine", "also fine"]


def test_missing_python_docs_gives_an_actionable_message(tmp_path):
    with pytest.raises(ValueError, match="apt-get install -y python3.11-doc"):
        sources.find_docs_dir(tmp_path / "nowhere")


def test_builtin_sources_give_prompts(tmp_path):
    docs = tmp_path / "_sources" / "library"
    docs.mkdir(parents=True)
    (docs / "thing.rst.txt").write_text(
        ":mod:`thing` --- a module\n\n" + "The :func:`thing.run` function runs "
        "things. " * 10 + "\n\n.. note::\n\n   skipped\n"
    )
    prompts = sources.python_docs_prompts(random.Random(0), tmp_path / "_sources")
    assert (
        len(prompts) == 1 and "thing.run function runs" in prompts[0].text and ":func:" not in prompts[0].text
    )
    code = sources.python_stdlib_prompts(random.Random(0), limit_files=5)
    assert code and all("```python" in p.text for p in code)
    metas = sources.self_instruct_meta_prompts(random.Random(0), 5)
    assert len(metas) == 5 and len(set(metas)) > 1
    assert (
        sources.clean_instruction('Request: "How do I bake bread at home?"\nmore')
        == "How do I bake bread at home?"
    )
    assert sources.clean_instruction("Sure! Here is one") is None


def test_heldout_split_is_deterministic_and_disjoint():
    prompts = [f"Question number {i}: why is {i} interesting?" for i in range(2000)]
    splits = [split_of(p, 10.0) for p in prompts]
    assert splits == [split_of(p, 10.0) for p in prompts]  # the same prompt always lands in the same split
    assert 100 < splits.count(HELDOUT) < 300
    assert (
        split_of("  Question number 3:  why is 3 interesting? ", 10.0) == splits[3]
    )  # whitespace-insensitive
    assert all(split_of(p, 0.0) == TRAIN for p in prompts[:50])


def test_draw_cuts_leave_room_for_targets():
    rng = random.Random(0)
    for length in range(0, 30):
        cuts = draw_cuts(length, 3, 8, rng)
        assert cuts == sorted(set(cuts)) and len(cuts) == min(8, max(0, length - 3))
        assert all(t >= 0 and t + 3 < length for t in cuts)


@pytest.fixture(scope="module")
def base():
    return load_model(dtype="bfloat16", device="cpu")


def test_build_dataset_and_refuse_other_model_or_n(base, tmp_path):
    prompts = [f"Name {i} animals that live in the sea." for i in range(1, 7)] + ["What is 2 + 2?"] * 2
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": p}) for p in prompts])
    config = DataConfig(
        files=(str(path),), max_new_tokens=10, cuts_per_sample=4, heldout_percent=40.0, batch_size=4
    )
    out = tmp_path / "data" / "set.jsonl"
    dataset = build_dataset(base, config, out)
    assert [p.name for p in out.parent.iterdir()] == ["set.jsonl"]  # written atomically: no temp file left
    header = dataset.header
    assert header["base_model"] == base.name and header["fingerprint"] == base.fingerprint
    assert (
        header["num_prompt_tokens"] == 3 and header["num_samples"] == len(dataset.samples) == 7
    )  # deduplicated
    assert header["generation"]["answers"]["tokens_per_s"] > 0
    for sample in dataset.samples:
        assert sample.cuts and all(t + 3 < len(sample.response_ids) for t in sample.cuts)
        assert len(sample.response_ids) <= 10
    train = {s.prompt for s in dataset.split(TRAIN)}
    held = {s.prompt for s in dataset.split(HELDOUT)}
    assert held and train and not train & held

    loaded = load_dataset(out, base, 3)
    assert [s.response_ids for s in loaded.samples] == [s.response_ids for s in dataset.samples]
    with pytest.raises(ValueError, match="N = 3 prompt tokens, not 4"):
        load_dataset(out, base, 4)
    other = replace(base, name="other-model", fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="built for base model 'smollm2-135m-instruct'"):
        load_dataset(out, other, 3)
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(out.read_text() + "{broken\n")
    with pytest.raises(ValueError, match=rf"{corrupt}:{len(dataset.samples) + 2}"):
        load_dataset(corrupt, base, 3)
