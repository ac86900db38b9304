"""The examples run (shortened) and write their figures."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))


@pytest.fixture(autouse=True)
def _figures_in_tmp(tmp_path, monkeypatch):
    """Shortened runs write their figures to a temporary folder, not over the real ones."""
    import _common

    monkeypatch.setattr(_common, "FIGURES", tmp_path)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "softmax"])
def test_activation_examples(name):
    module = __import__(name)
    assert module.main().exists()


@pytest.mark.parametrize("name", ["polytope_projection", "ellipsoid_projection"])
def test_training_examples_run_a_few_steps(name):
    module = __import__(name)
    assert module.main(iterations=4, points=8).exists()


def test_lqr_imitation_runs_a_few_steps():
    module = __import__("lqr_imitation")
    assert module.main(iterations=3, points=4, T=4).exists()


def test_mpc_imitation_runs_a_few_steps():
    module = __import__("mpc_imitation")
    assert module.main(iterations=3, points=4, T=4).exists()


def test_lml_topk_runs_a_few_steps():
    module = __import__("lml_topk")
    assert module.main(iterations=3, points=16).exists()


def test_optnet_qp_runs_a_few_steps():
    module = __import__("optnet_qp")
    assert module.main(iterations=3, points=8).exists()
