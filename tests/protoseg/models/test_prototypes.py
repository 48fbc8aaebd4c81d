"""The vectorised prototype step against the official per-class loop.

`protoseg.models.prototypes` must reproduce `tests/reference_official.py`
(a transcription of the official ProtoSeg code) without any Python loop over
classes and without host synchronisation.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from protoseg.models import prototypes as P
from protoseg.models.prototypes import assign, momentum_update, own_class_similarity, sinkhorn_plan
from reference_official import (argmax_assignment, official_gumbel_assignment, official_prototype_step,
                                official_sinkhorn)

TOL = 1e-5


# --------------------------------------------------------------------------- data

def make_labels(sizes: list[int], ignored: int, generator: torch.Generator) -> torch.Tensor:
    """Shuffled label vector with sizes[k] pixels of class k and `ignored` pixels of -1."""
    parts = [torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)]
    parts.append(torch.full((ignored,), -1, dtype=torch.long))
    labels = torch.cat(parts)
    return labels[torch.randperm(labels.numel(), generator=generator)]


def make_case(sizes=(500, 200, 37, 1, 0, 120, 0, 2), ignored=60, m=10, d=8, seed=0, correct_rate=0.7):
    """Unit embeddings and prototypes, uneven classes (one with a single pixel,
    two absent), ignored pixels, ~70% 'correct' pixels. A small d spreads the
    cosine similarities over most of [-1, 1], so exp(sim / 0.05) spans ~e^40
    and Sinkhorn has real work to do."""
    g = torch.Generator().manual_seed(seed)
    k = len(sizes)
    labels = make_labels(list(sizes), ignored, g)
    n = labels.numel()
    emb = F.normalize(torch.randn(n, d, generator=g), dim=1)
    protos = F.normalize(torch.randn(k, m, d, generator=g), dim=2)
    correct = torch.rand(n, generator=g) < correct_rate
    return dict(emb=emb, protos=protos, labels=labels, correct=correct, k=k, m=m)


def own_similarity(emb, protos, labels):
    """(N, M) similarity of each pixel to its own class's prototypes, as the head computes it."""
    k, m, d = protos.shape
    sim = (emb @ protos.reshape(k * m, d).t()).reshape(-1, k, m)
    return sim.gather(1, labels.clamp(min=0)[:, None, None].expand(-1, 1, m))[:, 0]


def official_sim(emb, protos):
    return torch.einsum('nd,kmd->nmk', emb, protos)  # the official `masks`, (N, M, K)


@pytest.fixture(params=["sorted", "index_add"])
def segment_path(request, monkeypatch):
    """Both segment-sum implementations, here on the CPU (and meta): sort +
    embedding_bag (the CPU's) and index_add_ (other devices')."""
    monkeypatch.setattr(P, "_SORTED_SEGMENT_DEVICES", ("cpu", "meta") if request.param == "sorted" else ())
    return request.param


def vectorised_step(c, gamma, iterations=3, epsilon=0.05, weight_dtype=torch.float32):
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    plan = sinkhorn_plan(own, c["labels"], c["k"], epsilon, iterations)
    chosen = assign(plan, "argmax")
    new = momentum_update(c["protos"], c["emb"], c["labels"], chosen, c["correct"].to(weight_dtype), gamma)
    target = torch.where(c["labels"] >= 0, c["labels"] * c["m"] + plan.argmax(dim=1), -1)
    return new, plan, target


def reference_step(c, gamma, iterations=3, epsilon=0.05):
    return official_prototype_step(c["protos"], c["emb"], c["labels"], official_sim(c["emb"], c["protos"]),
                                   c["correct"], gamma, c["k"], argmax_assignment, iterations, epsilon)


CASES = {
    "sharp-d8": dict(d=8, seed=0),
    "moderate-d64": dict(d=64, seed=1),
    "flat-d720": dict(d=720, seed=2),
    "m1": dict(d=16, m=1, seed=3),
    "no-ignored": dict(d=16, ignored=0, seed=4, sizes=(300, 3, 90)),
}


# --------------------------------------------------------------------------- (a) plan == official plan

@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("iterations", [3, 1, 10])
def test_plan_equals_official_per_class(name, iterations, segment_path):
    c = make_case(**CASES[name])
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    plan = sinkhorn_plan(own, c["labels"], c["k"], iterations=iterations)
    assert plan.shape == own.shape and plan.dtype == torch.float32
    _, ref_plan, _ = reference_step(c, 0.999, iterations=iterations)
    # and per class, straight from official_sinkhorn on that class's pixels alone
    for k in range(c["k"]):
        sel = c["labels"] == k
        if sel.any():
            ref_k, idx_k = official_sinkhorn(official_sim(c["emb"], c["protos"])[..., k][sel], iterations)
            torch.testing.assert_close(plan[sel], ref_k, atol=TOL, rtol=0)
            assert torch.equal(plan[sel].argmax(dim=1), idx_k)
    torch.testing.assert_close(plan, ref_plan, atol=TOL, rtol=0)


def test_plan_other_epsilon():
    c = make_case(d=32, seed=5)
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    for eps in (0.02, 0.1, 1.0):
        plan = sinkhorn_plan(own, c["labels"], c["k"], epsilon=eps)
        _, ref_plan, _ = reference_step(c, 0.999, epsilon=eps)
        torch.testing.assert_close(plan, ref_plan, atol=TOL, rtol=0)


def test_plan_single_pixel_class_is_uniform():
    c = make_case()
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    plan = sinkhorn_plan(own, c["labels"], c["k"])
    single = c["labels"] == 3
    assert single.sum() == 1
    torch.testing.assert_close(plan[single], torch.full((1, c["m"]), 1.0 / c["m"]), atol=1e-7, rtol=0)


def test_plan_does_not_mix_classes():
    """A class's plan depends on its own pixels only: changing another class's
    similarities (or an ignored pixel's) leaves it unchanged."""
    c = make_case(d=16, seed=6)
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    plan = sinkhorn_plan(own, c["labels"], c["k"])
    other = own.clone()
    hit = (c["labels"] != 0)
    other[hit] = torch.rand(int(hit.sum()), c["m"])
    plan2 = sinkhorn_plan(other, c["labels"], c["k"])
    sel = c["labels"] == 0
    torch.testing.assert_close(plan2[sel], plan[sel], atol=1e-6, rtol=0)
    assert not torch.allclose(plan2[c["labels"] == 1], plan[c["labels"] == 1], atol=1e-3)


def test_own_class_similarity_is_the_gather_of_own_class_columns():
    c = make_case(d=16, seed=16)
    k, m, d = c["protos"].shape
    sim = c["emb"] @ c["protos"].reshape(k * m, d).t()
    own = own_class_similarity(sim, c["labels"], m)
    assert torch.equal(own, sim.gather(1, c["labels"].clamp(min=0)[:, None] * m + torch.arange(m)))
    assert torch.equal(own, own_similarity(c["emb"], c["protos"], c["labels"]))


def test_proto_target_equals_official():
    for name in CASES:
        c = make_case(**CASES[name])
        _, _, target = vectorised_step(c, 0.999)
        _, _, ref_target = reference_step(c, 0.999)
        assert target.dtype == torch.long
        assert torch.equal(target, ref_target), name
        assert (target[c["labels"] < 0] == -1).all()
        assert target.max() < c["k"] * c["m"]


# --------------------------------------------------------------------------- (b) marginals

def _marginal_error(plan, labels, k, m):
    """Per class: max relative L1 deviation of the prototype marginals from N_k / M."""
    worst = 0.0
    for cls in range(k):
        sel = labels == cls
        nk = int(sel.sum())
        if nk:
            col = plan[sel].sum(dim=0).double()
            worst = max(worst, float((col - nk / m).abs().sum() / nk))
    return worst


@pytest.mark.parametrize("name", list(CASES))
def test_plan_rows_sum_to_one_and_ignored_rows_are_zero(name):
    c = make_case(**CASES[name])
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    plan = sinkhorn_plan(own, c["labels"], c["k"])
    valid = c["labels"] >= 0
    assert (plan >= 0).all()
    torch.testing.assert_close(plan[valid].sum(dim=1), torch.ones(int(valid.sum())), atol=1e-6, rtol=0)
    assert (plan[~valid] == 0).all()


def test_plan_ignored_rows_zero_even_with_extreme_similarity():
    c = make_case(d=8, seed=7)
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    own[c["labels"] < 0] = 1.0  # ignored pixels that would dominate a class if they leaked in
    plan = sinkhorn_plan(own, c["labels"], c["k"])
    assert (plan[c["labels"] < 0] == 0).all()
    torch.testing.assert_close(plan, sinkhorn_plan(own_similarity(c["emb"], c["protos"], c["labels"]),
                                                   c["labels"], c["k"]), atol=1e-7, rtol=0)


def test_plan_equipartition():
    """What holds after Sinkhorn-Knopp's final (pixel) normalisation: the
    prototype marginals of each class are only approximately N_k / M -- after
    the official 3 iterations the deviation can be large when similarities
    are spread (tens of % at d=8) -- but it shrinks monotonically with the
    iterations and vanishes at convergence. The total mass of each class is
    exactly N_k (its rows sum to 1)."""
    c = make_case(d=8, seed=0)
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    errors = [_marginal_error(sinkhorn_plan(own, c["labels"], c["k"], iterations=it), c["labels"], c["k"], c["m"])
              for it in (0, 1, 2, 3, 5, 10, 30, 200)]
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors  # monotone (L1 Sinkhorn error)
    assert errors[0] > 0.5  # the raw similarities are far from balanced
    assert errors[3] < errors[0] / 2
    assert errors[-1] < 1e-3, errors  # converged: equipartition
    # with the official 3 iterations, the vectorised marginals are the official ones
    _, ref_plan, _ = reference_step(c, 0.999)
    plan = sinkhorn_plan(own, c["labels"], c["k"])
    for cls in range(c["k"]):
        sel = c["labels"] == cls
        torch.testing.assert_close(plan[sel].sum(0), ref_plan[sel].sum(0), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(plan[sel].sum(), torch.tensor(float(sel.sum())), atol=1e-3, rtol=1e-5)


def test_plan_equipartition_nearly_exact_for_realistic_flat_similarities():
    """With D=720 embeddings the similarities are close together and 3
    iterations already balance the prototypes to ~1e-4."""
    c = make_case(d=720, seed=2)
    own = own_similarity(c["emb"], c["protos"], c["labels"])
    plan = sinkhorn_plan(own, c["labels"], c["k"])
    assert _marginal_error(plan, c["labels"], c["k"], c["m"]) < 1e-3


# --------------------------------------------------------------------------- (c) momentum update

@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("gamma", [0.999, 0.5, 0.0])
@pytest.mark.parametrize("weight_dtype", [torch.bool, torch.float32])  # mask path and real-weight path
def test_momentum_update_equals_official(name, gamma, weight_dtype, segment_path):
    c = make_case(**CASES[name])
    new, _, _ = vectorised_step(c, gamma, weight_dtype=weight_dtype)
    ref, _, _ = reference_step(c, gamma)
    assert new.shape == c["protos"].shape and new.dtype == c["protos"].dtype
    torch.testing.assert_close(new, ref, atol=TOL, rtol=0)
    if gamma < 0.9:  # the update really moved something, so the comparison is not vacuous
        assert (new - c["protos"]).abs().max() > 0.1


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("gamma", [0.999, 0.5, 0.0])
def test_momentum_update_real_weights_equal_official(name, gamma, segment_path):
    """Weights in [0, 1]: the official code multiplies both the one-hot
    assignment and the embeddings by its mask, so a pixel counts with its
    weight squared; so does the vectorised update."""
    c = make_case(**CASES[name])
    w = c["correct"] * torch.rand(c["labels"].numel(), generator=torch.Generator().manual_seed(17))
    chosen = assign(sinkhorn_plan(own_similarity(c["emb"], c["protos"], c["labels"]), c["labels"], c["k"]),
                    "argmax")
    new = momentum_update(c["protos"], c["emb"], c["labels"], chosen, w, gamma)

    def official(weights):
        return official_prototype_step(c["protos"], c["emb"], c["labels"], official_sim(c["emb"], c["protos"]),
                                       weights, gamma, c["k"])[0]
    torch.testing.assert_close(new, official(w), atol=TOL, rtol=0)
    if gamma < 0.9:  # not vacuous: the weights matter, and counting them once would differ
        assert (official(w) - official(c["correct"])).abs().max() > 1e-3
        assert (official(w) - official(w.sqrt())).abs().max() > 1e-3


def test_momentum_update_float64_equals_official(segment_path):
    """float64 takes embedding_bag's generic CPU kernel, which adds the rows
    past the last offset (the pixels that do not count) to the last bag:
    they must weigh 0 there."""
    c = make_case(d=16, seed=15)
    emb, protos = c["emb"].double(), c["protos"].double()
    w = c["correct"] * torch.rand(c["labels"].numel(), generator=torch.Generator().manual_seed(18)).double()
    ref, ref_plan, _ = official_prototype_step(protos, emb, c["labels"], official_sim(emb, protos), w, 0.5, c["k"])
    new = momentum_update(protos, emb, c["labels"], ref_plan.argmax(dim=1), w, 0.5)
    assert new.dtype == torch.float64
    torch.testing.assert_close(new, ref, atol=1e-12, rtol=0)


def test_momentum_update_given_assignment_equals_official_with_gumbel_like_assignment():
    """Same assignment fed to both sides (here a random one, as the official
    gumbel step produces): same prototypes."""
    c = make_case(d=32, seed=8)
    g = torch.Generator().manual_seed(1)
    chosen = torch.randint(0, c["m"], (c["labels"].numel(),), generator=g)

    def fixed(plan, _it=iter(range(c["k"]))):
        k = next(_it)
        while not (c["labels"] == k).any():
            k = next(_it)
        return chosen[c["labels"] == k]

    ref, _, _ = official_prototype_step(c["protos"], c["emb"], c["labels"], official_sim(c["emb"], c["protos"]),
                                        c["correct"], 0.7, c["k"], fixed)
    new = momentum_update(c["protos"], c["emb"], c["labels"], chosen, c["correct"].float(), 0.7)
    torch.testing.assert_close(new, ref, atol=TOL, rtol=0)


def test_momentum_update_untouched_prototypes_only_renormalised():
    c = make_case(d=16, seed=9)
    k, m, d = c["protos"].shape
    scale = torch.rand(k, m, 1, generator=torch.Generator().manual_seed(3)) * 3 + 0.2
    protos = c["protos"] * scale  # not unit: the final re-normalisation is visible
    chosen = torch.randint(0, m, (c["labels"].numel(),), generator=torch.Generator().manual_seed(4))
    weights = c["correct"].float()
    new = momentum_update(protos, c["emb"], c["labels"], chosen, weights, 0.5)

    got = torch.zeros(k * m)
    valid = c["labels"] >= 0
    slot = (c["labels"].clamp(min=0) * m + chosen)[valid & c["correct"]]
    got[slot] = 1
    got = got.reshape(k, m).bool()
    assert (~got).any() and got.any()
    # untouched (absent classes, ignored pixels only, no correct pixel): direction kept, unit norm
    torch.testing.assert_close(new[~got], F.normalize(protos[~got], dim=-1), atol=1e-6, rtol=0)
    # touched: moved towards the normalised sum of their pixels
    moved = (new[got] - F.normalize(protos[got], dim=-1)).norm(dim=-1)
    assert (moved > 1e-3).all()
    torch.testing.assert_close(new.norm(dim=-1), torch.ones(k, m), atol=1e-6, rtol=0)


def test_momentum_update_ignores_ignored_and_incorrect_pixels():
    c = make_case(d=16, seed=10)
    chosen = assign(sinkhorn_plan(own_similarity(c["emb"], c["protos"], c["labels"]), c["labels"], c["k"]),
                    "argmax")
    w = c["correct"].float()
    base = momentum_update(c["protos"], c["emb"], c["labels"], chosen, w, 0.5)
    emb2 = c["emb"].clone()
    junk = (c["labels"] < 0) | ~c["correct"]
    emb2[junk] = F.normalize(torch.randn(int(junk.sum()), emb2.shape[1]), dim=1)
    chosen2 = chosen.clone()
    chosen2[c["labels"] < 0] = c["m"] - 1
    torch.testing.assert_close(momentum_update(c["protos"], emb2, c["labels"], chosen2, w, 0.5), base,
                               atol=1e-6, rtol=0)


def test_momentum_update_zero_weights_leaves_prototypes_unchanged():
    c = make_case(d=16, seed=11)
    protos = c["protos"] * 2.5
    chosen = torch.zeros_like(c["labels"])
    for gamma in (0.999, 0.0):
        new = momentum_update(protos, c["emb"], c["labels"], chosen, torch.zeros(c["labels"].numel()), gamma)
        torch.testing.assert_close(new, c["protos"], atol=1e-6, rtol=0)
        ref, _, _ = official_prototype_step(protos, c["emb"], c["labels"], official_sim(c["emb"], protos),
                                            torch.zeros_like(c["correct"]), gamma, c["k"])
        torch.testing.assert_close(new, ref, atol=1e-6, rtol=0)


def test_momentum_update_gamma_zero_is_normalised_mean_direction():
    """gamma = 0: a touched prototype becomes exactly l2norm(sum of its pixels)."""
    c = make_case(d=16, seed=12)
    k, m, d = c["protos"].shape
    chosen = torch.randint(0, m, (c["labels"].numel(),), generator=torch.Generator().manual_seed(5))
    w = c["correct"].float()
    new = momentum_update(c["protos"], c["emb"], c["labels"], chosen, w, 0.0)
    sel = (c["labels"] == 0) & (chosen == 2) & c["correct"]
    assert sel.sum() > 5
    torch.testing.assert_close(new[0, 2], F.normalize(c["emb"][sel].sum(0), dim=0), atol=1e-6, rtol=0)


def test_momentum_update_does_not_modify_inputs():
    c = make_case(d=16, seed=13)
    before = {key: v.clone() for key, v in c.items() if torch.is_tensor(v)}
    vectorised_step(c, 0.5)
    for key, v in before.items():
        assert torch.equal(c[key], v), key


# --------------------------------------------------------------------------- (d) no loop over classes, no host sync

# ops whose output shape or control flow depends on tensor values: on an
# accelerator each of them waits for the device
_SYNC_OPS = {"item", "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "argwhere", "masked_select",
             "masked_scatter", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
             "unique_dim_consecutive", "repeat_interleave", "bincount", "_assert_async", "allclose", "tolist"}


class OpRecorder(TorchDispatchMode):
    """Records every dispatched aten op; flags data-dependent (host-syncing) ones,
    including boolean-mask indexing (it runs `nonzero` inside the kernel)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops.append(str(func))
        if name in _SYNC_OPS:
            self.syncs.append(str(func))
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices if i is not None):
                self.syncs.append(f"{func} with a boolean mask")
        return func(*args, **kwargs)


def _run_vectorised(c, mode="argmax"):
    own = own_similarity(c["emb"], c["protos"], c["labels"])  # outside: the head's gather is not under test
    with OpRecorder() as rec:
        plan = sinkhorn_plan(own, c["labels"], c["k"])
        chosen = assign(plan, mode, torch.Generator().manual_seed(0) if mode == "gumbel" else None)
        momentum_update(c["protos"], c["emb"], c["labels"], chosen, c["correct"].float(), 0.999)
    return rec


def _case_with_k(k, seed=0, n=3000, m=10, d=16):
    g = torch.Generator().manual_seed(seed)
    sizes = (torch.rand(k, generator=g) * 3).exp()
    sizes = (sizes / sizes.sum() * n).long().tolist()
    sizes[1] = 0  # an absent class
    sizes[2] = 1  # a single-pixel class
    return make_case(sizes=tuple(sizes), ignored=100, m=m, d=d, seed=seed)


@pytest.mark.parametrize("mode", ["argmax", "gumbel"])
def test_no_host_sync_and_op_count_independent_of_k(mode, segment_path):
    small, large = _run_vectorised(_case_with_k(3), mode), _run_vectorised(_case_with_k(150, seed=1), mode)
    assert small.syncs == [] and large.syncs == [], (small.syncs, large.syncs)
    assert small.ops == large.ops  # the same op sequence for 3 and 150 classes: no loop over classes
    assert len(small.ops) < 200  # a fixed, small number of ops (64 with argmax on the CPU today)
    assert any("embedding_bag" in op for op in small.ops) == (segment_path == "sorted")


def test_sync_detector_catches_the_official_loop():
    """The detector is not vacuous: the official per-class loop trips both checks."""
    def run(k):
        c = _case_with_k(k)
        sim_all = official_sim(c["emb"], c["protos"])
        with OpRecorder() as rec:
            official_prototype_step(c["protos"], c["emb"], c["labels"], sim_all, c["correct"], 0.999, c["k"])
        return rec
    small, large = run(3), run(20)
    assert small.syncs and large.syncs
    assert len(large.ops) > 4 * len(small.ops)


def test_runs_on_meta_device(segment_path):
    """No op needs tensor values (meta tensors have none: `.item()`, `nonzero`
    and boolean-mask indexing all raise on them)."""
    n, k, m, d = 1000, 19, 10, 32
    meta = dict(device="meta")
    sim, labels = torch.empty(n, m, **meta), torch.empty(n, dtype=torch.long, **meta)
    plan = sinkhorn_plan(sim, labels, k)
    assert plan.shape == (n, m) and plan.device.type == "meta"
    for mode in ("argmax", "gumbel"):
        chosen = assign(plan, mode)
        assert chosen.shape == (n,) and chosen.dtype == torch.long
    new = momentum_update(torch.empty(k, m, d, **meta), torch.empty(n, d, **meta), labels, chosen,
                          torch.empty(n, **meta), 0.999)
    assert new.shape == (k, m, d)
    with pytest.raises((NotImplementedError, RuntimeError)):  # and the official loop cannot run there
        official_prototype_step(torch.empty(k, m, d, **meta), torch.empty(n, d, **meta), labels,
                                torch.empty(n, m, k, **meta), torch.empty(n, **meta), 0.999, k)


# --------------------------------------------------------------------------- (e, f) assignment

def test_assign_argmax_is_plan_argmax():
    c = make_case(d=8, seed=14)
    plan = sinkhorn_plan(own_similarity(c["emb"], c["protos"], c["labels"]), c["labels"], c["k"])
    assert torch.equal(assign(plan, "argmax"), plan.argmax(dim=1))


def test_assign_unknown_mode_raises():
    with pytest.raises(ValueError):
        assign(torch.rand(4, 3), "sample")
    with pytest.raises(ValueError):
        assign(torch.rand(4, 3), "Argmax")


def test_assign_gumbel_is_softmax_of_plan_nearly_uniform():
    """The official `gumbel_softmax(plan, hard=True)` treats the plan's
    probabilities as logits: the hard sample is drawn from softmax(plan),
    close to uniform even for a fully peaked plan (e/(e+M-1) ~ 0.23 for the
    peak at M=10, not 1). Checked on the vectorised `assign` and on the
    official torch call alike."""
    rows, m = 40000, 10
    peaked = torch.full((rows, m), 0.0)
    peaked[:, 3] = 1.0
    soft = torch.full((rows, m), 0.02)
    soft[:, 7] = 0.82
    for plan in (peaked, soft, torch.zeros(rows, m)):
        expected = torch.softmax(plan[0], dim=0)
        if plan is peaked:
            assert float(expected[3]) == pytest.approx(math.e / (math.e + m - 1))  # 0.232
        freq = torch.bincount(assign(plan, "gumbel", torch.Generator().manual_seed(0)), minlength=m) / rows
        torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)  # ~5 sigma at 40000 rows
        torch.manual_seed(0)
        official = torch.bincount(official_gumbel_assignment(plan), minlength=m) / rows
        torch.testing.assert_close(official, expected, atol=0.01, rtol=0)
        assert freq.max() < 0.3 and freq.min() > 0.05  # nearly uniform, far from the argmax


def test_assign_gumbel_deterministic_for_a_seed():
    plan = torch.softmax(torch.randn(5000, 10, generator=torch.Generator().manual_seed(0)), dim=1)
    a = assign(plan, "gumbel", torch.Generator().manual_seed(42))
    b = assign(plan, "gumbel", torch.Generator().manual_seed(42))
    other = assign(plan, "gumbel", torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert (a != plan.argmax(dim=1)).float().mean() > 0.5  # not the argmax
    # the generator, not the global RNG, drives it
    torch.manual_seed(0)
    c1 = assign(plan, "gumbel", torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    c2 = assign(plan, "gumbel", torch.Generator().manual_seed(7))
    assert torch.equal(c1, c2)
