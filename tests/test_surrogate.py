"""The eigenvalue floor shared by the screening and the Newton steps (models/surrogate.py)."""

import torch

from specutils_deepclean.models.surrogate import floored


def _matrix(values):
    rotation, _ = torch.linalg.qr(torch.arange(1.0, 10.0, dtype=torch.float64).reshape(3, 3) ** 0.5)
    return rotation @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ rotation.T


def test_floored_keeps_a_well_conditioned_matrix():
    hess = _matrix([4.0, 2.0, 1.0])
    assert torch.allclose(floored(hess), hess, rtol=1e-10, atol=1e-12)
    assert torch.allclose(floored(hess, power=-1) @ hess, torch.eye(3, dtype=torch.float64), atol=1e-10)


def test_floored_raises_negative_curvature_to_the_floor():
    values = torch.linalg.eigvalsh(floored(_matrix([4.0, 1e-3, -2.0])))
    assert values.min() > 0 and values.min() < 1e-3  # the default floor: 1e-6 of 4


def test_damping_floors_at_its_share_of_the_largest_eigenvalue():
    """A damped step: eigenvalues below damping * largest are raised to it, per matrix."""
    hess = torch.stack([_matrix([4.0, 1e-3, -2.0]), _matrix([4.0, 1e-3, -2.0])])
    damped = floored(hess, damping=torch.tensor([0.0, 0.1]))
    low = torch.linalg.eigvalsh(damped).min(-1).values
    assert low[0] < 1e-3
    assert abs(float(low[1]) - 0.4) < 1e-6  # 0.1 of 4
    inverse = floored(hess, power=-1, damping=torch.tensor([0.0, 0.1]))
    assert torch.allclose(inverse[1] @ damped[1], torch.eye(3, dtype=torch.float64), atol=1e-10)
