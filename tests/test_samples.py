"""The cache of generated outputs (imf.eval.samples): a hit is the very output a fresh sampling gives, without a
model call; anything that changes the output (weights, guidance, grid, solver, noise, conditioning) misses."""
import torch

from imf.eval.samples import SampleCache, model_key
from imf.eval.sweep import generate, nfe_sweep
from imf.eval.systems import System
from imf.flow.schedules import sway, uniform
from imf.flow.solvers import Guided
from tests.eval_fakes import eval_set, velocity


class Shrink(torch.nn.Module):
    """``v = -a x``, a learnable velocity field."""

    def __init__(self, a: float = 0.7):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.calls = 0  # not state: two objects with the same weights have the same key

    def forward(self, x, *, t, r=None, cond):
        self.calls += 1
        return -self.a * x


def test_a_hit_is_the_fresh_output_without_a_model_call(tmp_path):
    es, cache, model = eval_set(), SampleCache(tmp_path), Shrink()
    fresh = generate(model, es, uniform(4))
    first = generate(model, es, uniform(4), cache=cache)
    assert torch.equal(first[0], fresh[0]) and first[1] == fresh[1] == 4 and cache.misses == 1
    twin = Shrink()  # another object with the same weights
    again = generate(twin, es, uniform(4), cache=cache)
    assert twin.calls == 0 and cache.hits == 1
    assert torch.equal(again[0], fresh[0]) and again[1:] == first[1:]  # the original sampling's seconds


def test_whatever_changes_the_output_misses(tmp_path):
    es, cache = eval_set(), SampleCache(tmp_path)
    generate(Shrink(), es, uniform(4), cache=cache)
    other_noise = eval_set(seed=5)
    other_cond = eval_set()
    other_cond.cond["mask"][0, -1] = False
    for model, e, grid, method in [(Shrink(0.6), es, uniform(4), "euler"), (Guided(Shrink(), 2.0), es, uniform(4), "euler"),
                                   (Shrink(), es, sway(4), "euler"), (Shrink(), es, uniform(4), "midpoint"),
                                   (Shrink(), other_noise, uniform(4), "euler"), (Shrink(), other_cond, uniform(4), "euler")]:
        key = cache.key(model, e, grid, method)
        assert cache.get(key) is None, (model, grid, method)
    assert model_key(Guided(Shrink(), 2.0)) != model_key(Guided(Shrink(), 3.0))
    assert model_key(velocity) is None and cache.key(velocity, es, uniform(4), "euler") is None  # a plain function


def test_a_damaged_entry_is_sampled_again_and_a_sweep_reads_back_the_same_table(tmp_path):
    es, cache, model = eval_set(), SampleCache(tmp_path), Shrink()
    points = [(System("m", model), 2), (System("m", model), 4)]
    first, kept = nfe_sweep(es, points, reference=(points[1][0], 4), progress=False, keep=True, cache=cache)
    assert len(list(tmp_path.glob("*.pt"))) == 2 and not list(tmp_path.glob(".*"))  # no temporary files left
    again, kept2 = nfe_sweep(es, points, reference=(points[1][0], 4), progress=False, keep=True, cache=cache)
    assert cache.hits == 2 and again.equals(first) and all(torch.equal(kept[k], kept2[k]) for k in kept)
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"not a checkpoint")
    third, _ = nfe_sweep(es, points, reference=(points[1][0], 4), progress=False, cache=cache)
    assert third.drop(columns="seconds").equals(first.drop(columns="seconds")) and cache.misses == 4


def test_the_same_module_changed_in_place_misses(tmp_path):
    """The fingerprint is memoised per module; an in-place weight change (an optimiser step, load_state_dict)
    must still give a new key, and restoring the weights the old one."""
    es, cache, model = eval_set(), SampleCache(tmp_path), Shrink()
    before = cache.key(model, es, uniform(4), "euler")
    assert cache.key(model, es, uniform(4), "euler") == before
    with torch.no_grad():
        model.a.mul_(0.5)
    halved = cache.key(model, es, uniform(4), "euler")
    assert halved != before and halved == cache.key(Shrink(0.35), es, uniform(4), "euler")
    model.load_state_dict(Shrink().state_dict())
    assert cache.key(model, es, uniform(4), "euler") == before
