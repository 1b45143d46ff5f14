import pytest
import torch
from helpers import tiny_model

from orderlab.model.masks import step_cache_rows, step_mask, training_mask


def test_training_mask_matches_the_table():
    # sizes (1, 2, 2): layout = [cond] + content g0 (1) + content g1 (2) + queries g0 (1), g1 (2), g2 (2)
    sizes = (1, 2, 2)
    m = training_mask(sizes, num_cond=1, mutual=True, block=True)
    assert m.shape == (1 + 3 + 5, 1 + 3 + 5)
    cond, c0, c1, q0, q1, q2 = [0], [1], [2, 3], [4], [5, 6], [7, 8]
    rows = lambda r, c: m[r][:, c]  # noqa: E731
    assert rows(cond, c0 + c1 + q0 + q1 + q2).sum() == 0 and rows(cond, cond).all()
    assert rows(c1, cond + c0 + c1).all() and rows(c1, q0 + q1 + q2).sum() == 0
    assert rows(q1, cond + c0).all() and rows(q1, c1).sum() == 0 and rows(q1, q1).all()
    assert rows(q2, cond + c0 + c1 + q2).all() and rows(q2, q0 + q1).sum() == 0
    assert rows(q0, cond + q0).all() and rows(q0, c0 + c1).sum() == 0


def test_block_and_mutual_knobs():
    sizes = (2, 3)
    causal = training_mask(sizes, 1, mutual=False, block=False)
    # content of group 0 (rows 1, 2): causal inside the group when block is off
    assert causal[1, 2].item() is False and causal[2, 1].item() is True
    # queries of group 1 (rows 5..7) see only themselves among queries when mutual is off
    q = causal[5:8, 5:8]
    assert torch.equal(q, torch.eye(3, dtype=torch.bool))
    full = training_mask(sizes, 1, mutual=True, block=True)
    assert full[1, 2].item() is True and full[5:8, 5:8].all()


@pytest.mark.parametrize("mutual", [True, False])
@pytest.mark.parametrize("block", [True, False])
def test_nobody_attends_another_groups_queries_and_every_row_sees_cond(mutual, block):
    sizes = (1, 3, 2, 4)
    m = training_mask(sizes, 2, mutual, block)
    nc = sum(sizes) - sizes[-1]
    q_group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    row_group = torch.cat([torch.full((2,), -2), torch.repeat_interleave(torch.arange(3), torch.tensor(sizes[:-1])),
                           q_group])
    qcols = m[:, 2 + nc:]  # (L, N)
    assert not (qcols & (row_group.unsqueeze(1) != q_group.unsqueeze(0))).any()
    assert m[:, :2].all()


def test_step_masks_are_the_rows_of_the_training_mask():
    # the step mask of step t equals the training mask restricted to the rows and columns that step sees
    sizes = (1, 2, 3)
    for mutual in (True, False):
        for block in (True, False):
            full = training_mask(sizes, 1, mutual, block)
            s1 = step_mask(sizes, 1, 1, 0, mutual, block)  # rows: content g0 + queries g1; cols: cond, c0, q1
            rows = [1, 1 + 3 + 1, 1 + 3 + 2]
            cols = [0, 1, 1 + 3 + 1, 1 + 3 + 2]
            assert torch.equal(s1, full[rows][:, cols])
    assert step_cache_rows(sizes, 0, 1, 0) == 1 and step_cache_rows(sizes, 2, 1, 0) == 2


def test_the_default_training_layout_gathers_plan_order():
    """The stream layout (Backbone.train_rows): content of every group but the last, then one query per target."""
    model = tiny_model(height=2, width=2)
    orders = torch.tensor([[2, 0, 3, 1]])
    targets = torch.gather(torch.tensor([[10, 11, 12, 13]]), 1, orders)  # plan order: [[12, 10, 13, 11]]
    rows = model.train_rows(targets, orders, (1, 1, 2))
    q = model.mask_id
    assert rows.tokens.tolist() == [[12, 10, q, q, q, q]]
    assert rows.positions.tolist() == [[2, 0, 2, 0, 3, 1]]
    assert rows.logit_rows.tolist() == [3, 4, 5, 6] and torch.equal(rows.mask, training_mask((1, 1, 2), 1))


def test_bad_sizes_and_steps():
    with pytest.raises(ValueError, match="sizes"):
        training_mask((2, 0))
    with pytest.raises(ValueError, match="t=3"):
        step_mask((1, 2), 3)
