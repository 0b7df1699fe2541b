"""fq_importance.reduce on hand-made maps, and GroupImportance validation."""

from __future__ import annotations

import pytest
import torch
from fq_importance import GroupImportance, ImportanceMap, reduce


def _gi(
    groups: dict[int, dict[str, list[float]]], counts: dict[int, int] | None = None
) -> GroupImportance:
    return GroupImportance(
        importance={
            g: {n: torch.tensor(v, dtype=torch.float64) for n, v in m.items()}
            for g, m in groups.items()
        },
        counts=counts or {g: 10 for g in groups},
        metric="grape",
        granularity="channel",
        batches=1,
    )


def _scores(imap: ImportanceMap) -> dict[str, list[float]]:
    return {n: t.tolist() for n, t in imap.scores.items()}


def test_balanced_hand_worked() -> None:
    # M_0 = 1 + 2 + 1 = 4, M_1 = 6 + 0 + 2 = 8 -> p = (1/3, 2/3).
    # I^0 / p_0 = a [3, 6], b [3]; I^1 / p_1 = a [9, 0], b [3]; max -> a [9, 6], b [3].
    gi = _gi({0: {"a": [1, 2], "b": [1]}, 1: {"a": [6, 0], "b": [2]}})
    got = _scores(reduce(gi))
    assert got["a"] == pytest.approx([9, 6], rel=1e-12) and got["b"] == pytest.approx(
        [3], rel=1e-12
    )


def test_balanced_equals_definition_random() -> None:
    g = torch.Generator().manual_seed(0)
    maps = {
        k: {
            "a": torch.rand(5, generator=g).tolist(),
            "b": (torch.rand(3, generator=g) * k).tolist(),
        }
        for k in range(4)
    }
    got = reduce(_gi(maps))
    mass = {k: sum(sum(v) for v in m.values()) for k, m in maps.items()}
    total = sum(mass.values())
    for name in ("a", "b"):
        for i in range(len(maps[0][name])):
            want = max((maps[k][name][i] / (mass[k] / total)) if mass[k] > 0 else 0.0 for k in maps)
            assert float(got.scores[name][i]) == pytest.approx(want, rel=1e-12)


def test_balanced_zero_mass() -> None:
    # All zero: p = 1/G, result zero. One zero group (absent from calibration): it contributes 0.
    assert _scores(reduce(_gi({0: {"a": [0, 0]}, 1: {"a": [0, 0]}}))) == {"a": [0, 0]}
    got = _scores(reduce(_gi({0: {"a": [1, 3]}, 1: {"a": [0, 0]}}, {0: 5, 1: 0})))
    assert got == {"a": [1, 3]}  # p_0 = 1


def test_max_mean_cvar_hand_worked() -> None:
    # Four groups, one scope: values 1, 4, 2, 8.
    gi = _gi({0: {"a": [1]}, 1: {"a": [4]}, 2: {"a": [2]}, 3: {"a": [8]}})
    assert _scores(reduce(gi, "max")) == {"a": [8]}
    assert _scores(reduce(gi, "mean")) == {"a": [3.75]}
    assert _scores(reduce(gi, "cvar", cvar_alpha=0.5)) == {"a": [6]}  # ceil(2) = 2 largest: 8, 4
    assert _scores(reduce(gi, "cvar", cvar_alpha=0.3))["a"] == pytest.approx(
        [14 / 3]
    )  # ceil(2.8) = 3
    assert _scores(reduce(gi, "cvar", cvar_alpha=0.1)) == {"a": [3.75]}  # ceil(3.6) = 4: the mean
    assert _scores(reduce(gi, "cvar", cvar_alpha=0.9)) == {"a": [8]}  # ceil(0.4) = 1: the max
    # (1 - 0.1) * 10 is 9.000000000000002 in floats: must be 9 groups, not 10.
    ten = _gi({k: {"a": [float(k)]} for k in range(10)})
    assert _scores(reduce(ten, "cvar", cvar_alpha=0.1)) == {"a": [5.0]}  # mean of 1..9


def test_subtractive() -> None:
    gi = _gi({0: {"a": [5, 1]}, 1: {"a": [2, 3]}}, {0: 30, 1: 10})
    # Default privileged = the larger group, 0: I = I^1 - beta * I^0.
    assert _scores(reduce(gi, "subtractive", beta=0.5)) == {"a": [-0.5, 2.5]}
    assert _scores(reduce(gi, "subtractive", privileged=1)) == {"a": [3, -2]}
    tie = _gi({0: {"a": [5, 1]}, 1: {"a": [2, 3]}}, {0: 10, 1: 10})
    assert _scores(reduce(tie, "subtractive")) == {"a": [-3, 2]}  # tie: the lower id is privileged


def test_reduce_keeps_dtype_and_granularity() -> None:
    gi = GroupImportance(
        importance={0: {"a": torch.ones(2, 3)}, 1: {"a": torch.zeros(2, 3)}},
        counts={0: 1, 1: 1},
        metric="taylor",
        granularity="param",
        batches=2,
    )
    out = reduce(gi, "mean")
    assert out.granularity.value == "param" and out.scores["a"].dtype == torch.float32


def test_reduce_errors() -> None:
    three = _gi({0: {"a": [1]}, 1: {"a": [2]}, 2: {"a": [3]}})
    with pytest.raises(ValueError, match="exactly two groups; got 3"):
        reduce(three, "subtractive")
    with pytest.raises(ValueError, match="reducer must be one of"):
        reduce(three, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cvar_alpha"):
        reduce(three, "cvar", cvar_alpha=1.0)
    two = _gi({0: {"a": [1]}, 1: {"a": [2]}})
    with pytest.raises(ValueError, match="privileged must be one of"):
        reduce(two, "subtractive", privileged=5)
    with pytest.raises(ValueError, match="non-negative"):
        reduce(_gi({0: {"a": [-1.0]}, 1: {"a": [2]}}), "balanced")
    with pytest.raises(TypeError, match="GroupImportance"):
        reduce({0: {"a": torch.ones(1)}}, "max")  # type: ignore[arg-type]


def test_group_importance_validation() -> None:
    ok = {
        "importance": {0: {"a": torch.ones(2)}},
        "counts": {0: 3},
        "metric": "grape",
        "granularity": "channel",
        "batches": 1,
    }
    assert GroupImportance(**ok).group_map(0).scores["a"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="metric must be one of"):
        GroupImportance(**{**ok, "metric": "fisher"})
    with pytest.raises(ValueError, match="counts must have exactly the groups"):
        GroupImportance(**{**ok, "counts": {1: 3}})
    with pytest.raises(ValueError, match=r"counts\[0\] must be an int >= 0"):
        GroupImportance(**{**ok, "counts": {0: -1}})
    with pytest.raises(ValueError, match="has shape"):
        GroupImportance(
            **{
                **ok,
                "importance": {0: {"a": torch.ones(2)}, 1: {"a": torch.ones(3)}},
                "counts": {0: 1, 1: 1},
            }
        )
    with pytest.raises(ValueError, match="same order"):
        GroupImportance(
            **{
                **ok,
                "importance": {0: {"a": torch.ones(2)}, 1: {"b": torch.ones(2)}},
                "counts": {0: 1, 1: 1},
            }
        )
    with pytest.raises(ValueError, match="NaN"):
        GroupImportance(**{**ok, "importance": {0: {"a": torch.tensor([float("nan"), 1.0])}}})
    with pytest.raises(KeyError, match="unknown group"):
        GroupImportance(**ok).group_map(4)


def test_reexports_importance_map() -> None:
    import fq_importance
    import fq_quant

    assert fq_importance.ImportanceMap is fq_quant.ImportanceMap
