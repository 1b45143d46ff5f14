"""orderlab.checks.check_positive_int: one message format for every "must be an int >= k" check."""

import pytest

from orderlab.checks import check_positive_int
from orderlab.plan import PlanError


@pytest.mark.parametrize("value", [1, 7, 10 ** 20])
def test_returns_a_good_value(value):
    assert check_positive_int(value, "--threads") == value


@pytest.mark.parametrize("value", [0, -3, True, False, 2.0, "2", None])
def test_bad_values_name_the_key_and_value(value):
    with pytest.raises(ValueError) as err:
        check_positive_int(value, "--threads")
    assert str(err.value) == f"--threads={value!r} must be an int >= 1"


def test_minimum_maximum_and_error_class():
    assert check_positive_int(0, "n_trials", minimum=0) == 0
    assert check_positive_int(3, "num_known", minimum=0, maximum=3) == 3
    with pytest.raises(ValueError, match=r"^model\.budgets=9 must be an int in 1\.\.8$"):
        check_positive_int(9, "model.budgets", maximum=8)
    with pytest.raises(PlanError, match=r"^num_known=-1 must be an int in 0\.\.3$"):
        check_positive_int(-1, "num_known", minimum=0, maximum=3, error=PlanError)
