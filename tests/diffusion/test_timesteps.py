"""Training timestep samplers: uniform, and loss-aware importance sampling (Nichol & Dhariwal
2021, sec. 3.3)."""

import pytest
import torch

from diffuse_cli.diffusion import ImportanceSampler, UniformSampler, get_timestep_sampler

T = 8


def filled(table: torch.Tensor) -> ImportanceSampler:
    """An importance sampler whose history at each t holds ten copies of table[t]."""
    sampler = ImportanceSampler(len(table))
    for _ in range(10):
        sampler.update(torch.arange(len(table)), table)
    return sampler


def test_uniform_weights_are_one():
    t, w = UniformSampler(T).sample(1000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() == 0 and t.max() == T - 1
    assert torch.equal(w, torch.ones(1000))
    assert not UniformSampler.needs_losses and UniformSampler(T).state_dict() == {}


def test_importance_is_uniform_until_every_t_has_ten_losses():
    sampler = ImportanceSampler(T)
    table = torch.arange(1.0, T + 1)
    for _ in range(10):  # every t but the last gets its ten values
        sampler.update(torch.arange(T - 1), table[:-1])
    sampler.update(torch.full((9,), T - 1), torch.ones(9))
    assert not sampler.warmed_up()
    torch.testing.assert_close(
        sampler.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64)
    )
    _, w = sampler.sample(50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w, torch.ones(50))
    sampler.update(torch.tensor([T - 1]), torch.tensor([1.0]))
    assert sampler.warmed_up()
    assert not torch.allclose(sampler.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64))


def test_importance_probabilities_are_the_rms_mixed_with_uniform():
    sampler = filled(torch.zeros(T))
    history = torch.rand(T, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for k in range(10):  # overwrite the history, oldest first
        sampler.update(torch.arange(T), history[:, k])
    assert torch.equal(sampler.loss_history, history)
    rms = history.pow(2).mean(dim=1).sqrt()
    expected = 0.999 * rms / rms.sum() + 0.001 / T
    torch.testing.assert_close(sampler.probabilities(), expected, rtol=1e-12, atol=0)


def test_a_full_history_drops_its_oldest_value():
    sampler = ImportanceSampler(2)
    for k in range(12):
        sampler.update(torch.tensor([0]), torch.tensor([float(k)]))
    assert sampler.loss_counts.tolist() == [10, 0]
    assert sampler.loss_history[0].tolist() == [float(k) for k in range(2, 12)]


def test_importance_weights_keep_the_loss_unbiased():
    """E_p[w L_t] with w = 1 / (T p_t) is the uniform mean of a fixed loss table: exactly in
    expectation, and within 4 standard errors for 200000 draws."""
    table = torch.tensor([5.0, 0.1, 0.2, 3.0, 0.01, 1.0, 0.5, 8.0], dtype=torch.float64)
    sampler = filled(table)
    p = sampler.probabilities()
    assert p.argmax() == 7 and p.argmin() == 4
    weights = 1 / (T * p)
    torch.testing.assert_close((p * weights * table).sum(), table.mean(), rtol=1e-12, atol=0)
    t, w = sampler.sample(200_000, generator=torch.Generator().manual_seed(2))
    values = w.double() * table[t]
    se = values.std() / len(values) ** 0.5
    assert abs(values.mean() - table.mean()) < 4 * se
    # importance sampling lowers the variance of the estimate on this table
    uniform = table[torch.randint(0, T, (200_000,), generator=torch.Generator().manual_seed(3))]
    assert values.var() < uniform.var()


def test_importance_state_resumes_exactly():
    g = torch.Generator().manual_seed(4)
    straight = ImportanceSampler(T)
    for _ in range(30):
        straight.update(torch.randint(0, T, (8,), generator=g), torch.rand(8, generator=g))
    resumed = ImportanceSampler(T)
    resumed.load_state_dict(straight.state_dict())
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    draws = [s.sample(16, generator=torch.Generator().manual_seed(5)) for s in (straight, resumed)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    with pytest.raises(ValueError, match="shape"):
        ImportanceSampler(T + 1).load_state_dict(straight.state_dict())


def test_timestep_samplers_by_name():
    assert isinstance(get_timestep_sampler("importance", T), ImportanceSampler)
    with pytest.raises(ValueError, match="importance, uniform"):
        get_timestep_sampler("stratified", T)
