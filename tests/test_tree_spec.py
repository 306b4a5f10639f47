"""Tree specs: valid ones round-trip through JSON; invalid ones are refused with what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppdecode.tree.buffers import build_buffers, rank0_reach
from ppdecode.tree.spec import TreeSpec, load_tree, sibling_tree


def spec_dict(**changes: object) -> dict:
    data: dict = {
        "num_prompt_tokens": 2,
        "top_k": [3, 2],
        "trees": {
            "1": [{"path": [0], "slots": 2}, {"path": [2], "slots": 0}],
            "2": [{"path": [0], "slots": 1}, {"path": [0, 1], "slots": 2}],
        },
    }
    data.update(changes)
    return data


def test_round_trip(tmp_path: Path) -> None:
    spec = TreeSpec.from_dict(spec_dict())
    spec.save(tmp_path / "t.json")
    again = TreeSpec.load(tmp_path / "t.json")
    assert again == spec
    assert again.input_size(2) == 1 + 2 + 2 + 3
    assert again.root_slots == 2


def test_packaged_default_tree_is_valid() -> None:
    spec = load_tree("default")
    assert spec.num_prompt_tokens == 3
    assert all(spec.input_size(d) <= 32 for d in range(4))


def test_a_sibling_tree_is_the_rank0_path_with_its_siblings_and_no_prompt_slots() -> None:
    """What a draft with prompt tokens proposes: two tokens it wrote (one candidate each), then the
    top-3 and top-2 of its guesses past them."""
    spec = sibling_tree((1, 1, 3, 2))
    deepest = spec.tree(4)
    assert [node.path for node in deepest] == [
        (0,),
        (0, 0),
        (0, 0, 0),
        (0, 0, 1),
        (0, 0, 2),
        (0, 0, 0, 0),
        (0, 0, 0, 1),
    ]
    assert all(node.slots == 0 for node in deepest) and spec.root_slots == 0
    assert TreeSpec.from_dict(spec.to_dict()) == spec  # a valid spec
    buffers = build_buffers(spec, 4)
    assert rank0_reach(spec, 4) == 4 and buffers.num_inputs == 1 + 7
    assert [len(children) for children in buffers.children] == [1, 1, 3, 2, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trees": {"1": [{"path": [0], "slots": 1}], "2": [{"path": [0, 0], "slots": 0}]}}, "prefix-closed"),
        ({"trees": {"1": [{"path": [3], "slots": 1}], "2": [{"path": [0], "slots": 0}]}}, "rank 3"),
        ({"trees": {"1": [{"path": [0], "slots": 3}], "2": [{"path": [0], "slots": 0}]}}, "slots"),
        ({"trees": {"1": [], "2": [{"path": [0], "slots": 0}]}}, "empty"),
        ({"trees": {"1": [{"path": [0], "slots": 0}]}}, "depths"),
        ({"trees": {"1": [{"path": [0, 0], "slots": 0}], "2": [{"path": [0], "slots": 0}]}}, "longer"),
        ({"top_k": [3]}, "top_k"),
        ({"num_prompt_tokens": 0}, "num_prompt_tokens"),
        ({"trees": {"1": [{"path": [0]}], "2": [{"path": [0], "slots": 0}]}}, "slots"),
    ],
)
def test_invalid_specs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TreeSpec.from_dict(spec_dict(**changes))


def test_bad_json_and_unknown_names(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tree(bad)
    with pytest.raises(ValueError, match="unknown tree"):
        load_tree("no-such-tree")
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="does not exist"):
        load_tree(missing)
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="JSON object"):
        load_tree(tmp_path / "list.json")
