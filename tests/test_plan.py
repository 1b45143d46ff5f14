import pytest
import torch

from orderlab import Plan, PlanError


def test_plan_fields_and_step_of():
    plan = Plan(order=torch.tensor([3, 0, 2, 1]), sizes=(1, 3), height=2, width=2)
    assert plan.num_steps == 2 and plan.num_tokens == 4
    assert [g.tolist() for g in plan.groups] == [[3], [0, 2, 1]]
    assert plan.step_of.tolist() == [1, 1, 1, 0]
    assert plan.offsets == (0, 1, 4)
    assert plan.step_map().shape == (2, 2)


@pytest.mark.parametrize(
    "order, sizes, h, w, needle",
    [
        ([0, 1, 2], (3,), 2, 2, "N=4"),
        ([0, 1, 1, 3], (4,), 2, 2, "[2]"),
        ([0, 1, 2, 4], (4,), 2, 2, "outside"),
        ([0, 1, 2, 3], (2, 1), 2, 2, "sum to 3"),
        ([0, 1, 2, 3], (4, 0), 2, 2, ">= 1"),
        ([0], (1,), 0, 1, "height=0"),
    ],
)
def test_plan_rejects_bad_input(order, sizes, h, w, needle):
    with pytest.raises(PlanError, match=None) as err:
        Plan(order=torch.tensor(order), sizes=sizes, height=h, width=w)
    assert needle in str(err.value)


def test_plan_with_known_prefix():
    plan = Plan(order=torch.tensor([0, 1, 3, 2]), sizes=(1, 1), height=2, width=2, num_known=2)
    assert plan.known.tolist() == [0, 1]
    assert plan.step_of.tolist() == [-1, -1, 1, 0]
    assert plan == Plan(order=torch.tensor([0, 1, 3, 2]), sizes=(1, 1), height=2, width=2, num_known=2)
