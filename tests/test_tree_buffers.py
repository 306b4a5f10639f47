"""Tree buffers on hand-written trees: masks are ancestor closures, positions are depths (METHOD §3)."""

from __future__ import annotations

import pytest
import torch

from ppdecode.tree.buffers import build_buffers, rank0_reach
from ppdecode.tree.spec import TreeNode, TreeSpec

# depth-2 tree: root(2 slots) -> (0)[2 slots] -> (0,0)[1 slot], (0,1)[0]; (1)[0]
SPEC = TreeSpec(
    num_prompt_tokens=2,
    top_k=(2, 2),
    trees=(
        (TreeNode((0,), 1),),
        (TreeNode((1,), 0), TreeNode((0,), 2), TreeNode((0, 1), 0), TreeNode((0, 0), 1)),
    ),
)


def test_inputs_are_ordered_root_nodes_then_slots() -> None:
    b = build_buffers(SPEC, 2)
    # token inputs: root, (0), (1), (0,0), (0,1); then slots: root s1, root s2, (0) s1, (0) s2, (0,0) s1
    assert b.num_nodes == 4
    assert b.num_inputs == 5 + 2 + 2 + 1 == SPEC.input_size(2)
    assert b.parent.tolist() == [0, 0, 0, 1, 1]
    assert b.children == ((1, 2), (3, 4), (), (), ())
    assert b.slot_prompt_index.tolist() == [0, 1, 0, 1, 0]
    assert b.slot_inputs[:, :, 0].tolist() == [[5, 6], [7, 8], [-1, -1], [9, -1], [-1, -1]]
    assert b.node_slots == (2, 2, 0, 1, 0)


def test_candidate_index_points_at_rank_of_its_depth() -> None:
    b = build_buffers(SPEC, 2)
    k = SPEC.max_top_k
    # (0) -> depth 1 rank 0, (1) -> depth 1 rank 1, (0,0) -> depth 2 rank 0, (0,1) -> depth 2 rank 1
    assert b.candidate_index.tolist() == [0, 1, k + 0, k + 1]


def test_node_mask_is_ancestor_closure_and_positions_are_depths() -> None:
    b = build_buffers(SPEC, 2)
    expected_tokens = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 0, 1, 0, 0],
            [1, 1, 0, 1, 0],
            [1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(b.attend[:5, :5], expected_tokens)
    assert not b.attend[:5, 5:].any(), "token inputs never see prompt slots"
    assert b.position_offsets[:5].tolist() == [0, 1, 1, 2, 2]


def test_slots_see_owner_ancestors_and_earlier_slots_only() -> None:
    b = build_buffers(SPEC, 2)
    rows = {
        5: [0, 5],  # root slot 1: root, itself
        6: [0, 5, 6],  # root slot 2: root, slot 1, itself
        7: [0, 1, 7],  # (0) slot 1
        8: [0, 1, 7, 8],  # (0) slot 2
        9: [0, 1, 3, 9],  # (0,0) slot 1
    }
    for row, seen in rows.items():
        assert b.attend[row].nonzero().flatten().tolist() == seen, row
    # slot j of a node at depth d sits at d + j
    assert b.position_offsets[5:].tolist() == [1, 2, 2, 3, 3]


def test_paths_cover_every_leaf_and_pad() -> None:
    b = build_buffers(SPEC, 2)
    assert sorted(b.path_rows) == [(1, 3), (1, 4), (2,)]
    padded = {tuple(row) for row in b.paths.tolist()}
    assert (2, b.num_inputs) in padded


def test_depth_zero_is_root_with_its_slots() -> None:
    b = build_buffers(SPEC, 0)
    assert b.num_nodes == 0 and b.num_inputs == 3
    assert b.attend.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert b.position_offsets.tolist() == [0, 1, 2]


def test_ensemble_members_do_not_see_each_other() -> None:
    b = build_buffers(SPEC, 1, ensemble=2)
    # root has 2 slots x 2 members; node (0) has 1 slot x 2 members
    assert b.num_inputs == 2 + 4 + 2
    member = b.slot_member.tolist()
    for row in range(2, b.num_inputs):
        for col in range(2, b.num_inputs):
            if b.attend[row, col]:
                assert member[row - 2] == member[col - 2]
    assert b.slot_inputs[0].tolist() == [[2, 4], [3, 5]]


def test_buffers_are_cached() -> None:
    assert build_buffers(SPEC, 2) is build_buffers(SPEC, 2)


def test_depth_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        build_buffers(SPEC, 3)


def test_a_lookup_chain_hangs_under_the_rank0_path_after_the_tree_nodes() -> None:
    assert rank0_reach(SPEC, 2) == 2 and rank0_reach(SPEC, 1) == 1 and rank0_reach(SPEC, 0) == 0
    plain = build_buffers(SPEC, 2)
    b = build_buffers(SPEC, 2, chain_at=2, chain_length=3)
    # token inputs: root, (0), (1), (0,0), (0,1), then the chain 5 -> 6 -> 7 under (0,0); slots after
    assert b.num_nodes == 4 + 3 and b.num_inputs == plain.num_inputs + 3 and b.chain_length == 3
    assert b.parent.tolist() == [0, 0, 0, 1, 1, 3, 5, 6]
    assert b.candidate_index.tolist() == plain.candidate_index.tolist()  # the chain takes no candidates
    assert b.position_offsets[5:8].tolist() == [3, 4, 5]
    assert b.attend[7].nonzero().flatten().tolist() == [0, 1, 3, 5, 6, 7]
    assert b.node_slots[5:8] == (0, 0, 0)
    assert sorted(b.path_rows) == [(1, 3, 5, 6, 7), (1, 4), (2,)]
    # the slots moved by three inputs but still see their owner's ancestors
    assert b.slot_inputs[3, 0, 0] == plain.slot_inputs[3, 0, 0] + 3
    assert b.attend[int(b.slot_inputs[3, 0, 0])].nonzero().flatten().tolist() == [0, 1, 3, 12]


def test_a_chain_from_the_root_at_depth_zero() -> None:
    b = build_buffers(SPEC, 0, chain_at=0, chain_length=2)
    assert b.num_nodes == 2 and b.num_inputs == 3 + 2
    assert b.parent.tolist() == [0, 0, 1] and b.children[0] == (1,)
    assert b.position_offsets.tolist() == [0, 1, 2, 1, 2]  # chain at depths 1, 2; root slots at 1, 2


def test_a_chain_off_the_rank0_path_is_refused() -> None:
    with pytest.raises(ValueError, match="lookup chain"):
        build_buffers(SPEC, 1, chain_at=2, chain_length=1)
