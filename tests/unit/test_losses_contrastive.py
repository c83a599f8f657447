"""CRD: the NCE loss against a numpy loop, the memory bank's bookkeeping, both directions against a naive
implementation, gradient routing, and a tiny optimisation in which CRD aligns student with teacher."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdkit.errors import ConfigError, ShapeError
from kdkit.losses.contrastive import CRDHead, MemoryBank, crd_loss, crd_nce_loss


def _np_nce(x, n_data, eps=1e-7):
    b, n1 = x.shape
    m = n1 - 1
    pn = 1.0 / n_data
    total = 0.0
    for i in range(b):
        total += np.log(x[i, 0] / (x[i, 0] + m * pn + eps))
        for j in range(1, n1):
            total += np.log(m * pn / (x[i, j] + m * pn + eps))
    return -total / b


def _unit(b, d, seed):
    return F.normalize(torch.randn(b, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_crd_nce_loss_matches_loop_and_is_monotone():
    x = torch.rand(5, 9, generator=torch.Generator().manual_seed(0)) * 3 + 0.01
    assert float(crd_nce_loss(x, 100)) == pytest.approx(_np_nce(x.double().numpy(), 100), rel=1e-5)
    better = x.clone()
    better[:, 0] *= 2.0  # a more confident positive
    assert float(crd_nce_loss(better, 100)) < float(crd_nce_loss(x, 100))
    quieter = x.clone()
    quieter[:, 1:] *= 0.5  # less mass on negatives
    assert float(crd_nce_loss(quieter, 100)) < float(crd_nce_loss(x, 100))
    with pytest.raises(ShapeError):
        crd_nce_loss(torch.rand(4, 1), 10)


def test_memory_bank_init_state_and_published_defaults():
    bank = MemoryBank(50, generator=torch.Generator().manual_seed(0))
    assert (bank.feat_dim, bank.momentum, bank.temperature) == (128, 0.5, 0.07)
    torch.testing.assert_close(bank.memory_s.norm(dim=1), torch.ones(50))
    assert float(bank.z_s) < 0 and float(bank.z_t) < 0
    assert {"memory_s", "memory_t", "z_s", "z_t"} <= set(bank.state_dict())  # checkpointed with the term
    assert not bank.memory_s.requires_grad


def test_negative_sampling_exact_mode_and_determinism():
    labels = torch.arange(200) % 10
    bank = MemoryBank(200, 8, labels=labels)
    index = torch.tensor([0, 1, 2, 13])
    a = bank.sample_indices(index, 64, torch.Generator().manual_seed(1))
    b = bank.sample_indices(index, 64, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (4, 65)
    assert torch.equal(a[:, 0], index)
    assert not bool((labels[a[:, 1:]] == labels[index][:, None]).any())  # negatives come from other classes
    assert int(a.min()) >= 0 and int(a.max()) < 200


def _naive_crd(es, et, idx, mem_s, mem_t, tau, n_data, z_s=None, z_t=None):
    """Direct transcription of the reference's ContrastMemory + two ContrastLoss calls, in float64 numpy."""
    es, et, mem_s, mem_t = (x.double().numpy() for x in (es, et, mem_s, mem_t))
    idx = idx.numpy()
    out_s = np.exp(np.einsum("bkd,bd->bk", mem_t[idx], es) / tau)  # student anchor vs teacher memory
    out_t = np.exp(np.einsum("bkd,bd->bk", mem_s[idx], et) / tau)
    z_s = out_s.mean() * n_data if z_s is None else z_s
    z_t = out_t.mean() * n_data if z_t is None else z_t
    return _np_nce(out_s / z_s, n_data) + _np_nce(out_t / z_t, n_data), z_s, z_t


def test_crd_loss_matches_naive_and_updates_memory():
    n_data, d, tau = 40, 6, 0.07
    bank = MemoryBank(n_data, d, temperature=tau, generator=torch.Generator().manual_seed(2))
    es, et = _unit(4, d, 3), _unit(4, d, 4)
    index = torch.tensor([3, 7, 11, 20])
    idx = bank.sample_indices(index, 10, torch.Generator().manual_seed(5))
    old_s, old_t = bank.memory_s.clone(), bank.memory_t.clone()
    ref, z_s, z_t = _naive_crd(es, et, idx, old_s, old_t, tau, n_data)
    assert float(crd_loss(es, et, index, bank, contrast_index=idx)) == pytest.approx(ref, rel=1e-4)
    assert float(bank.z_s) == pytest.approx(z_s, rel=1e-4) and float(bank.z_t) == pytest.approx(z_t, rel=1e-4)
    torch.testing.assert_close(bank.memory_s[index], F.normalize(0.5 * old_s[index] + 0.5 * es, dim=1))
    torch.testing.assert_close(bank.memory_t[index], F.normalize(0.5 * old_t[index] + 0.5 * et, dim=1))
    untouched = torch.ones(n_data, dtype=torch.bool)
    untouched[index] = False
    torch.testing.assert_close(bank.memory_s[untouched], old_s[untouched])
    # Second batch: Z is kept from the first, the memory used is the updated one.
    es2, et2 = _unit(4, d, 6), _unit(4, d, 7)
    index2 = torch.tensor([0, 3, 5, 9])
    idx2 = bank.sample_indices(index2, 10, torch.Generator().manual_seed(8))
    ref2, _, _ = _naive_crd(es2, et2, idx2, bank.memory_s, bank.memory_t, tau, n_data, z_s, z_t)
    assert float(crd_loss(es2, et2, index2, bank, contrast_index=idx2)) == pytest.approx(ref2, rel=1e-4)
    assert float(bank.z_s) == pytest.approx(z_s, rel=1e-4)


@pytest.mark.parametrize("n_neg", [8, 400])  # 9·4 < 1000 rows: gather path; 401·4 >= 1000: full-memory path
def test_both_scoring_paths_agree_and_backward_survives_the_update(n_neg):
    n_data, d = 1000, 4
    bank = MemoryBank(n_data, d, generator=torch.Generator().manual_seed(9))
    head_s, head_t = CRDHead(10, d), CRDHead(12, d)
    fs = torch.randn(5, 10, generator=torch.Generator().manual_seed(10))
    ft = torch.randn(5, 12, generator=torch.Generator().manual_seed(11), requires_grad=True)
    index = torch.tensor([1, 2, 3, 4, 5])
    idx = bank.sample_indices(index, n_neg, torch.Generator().manual_seed(12))
    es, et = head_s(fs), head_t(ft.detach())  # the taps detach teacher features
    manual = torch.exp((bank.memory_t[idx] * es[:, None, :]).sum(-1) / bank.temperature)
    torch.testing.assert_close(bank.scores(es, bank.memory_t, idx), manual, rtol=1e-5, atol=0)
    loss = crd_loss(es, et, index, bank, contrast_index=idx)
    loss.backward()  # the bank was updated in the same call; the backward must still work
    assert head_s.linear.weight.grad is not None and head_t.linear.weight.grad is not None  # both heads train
    assert ft.grad is None  # nothing reaches the teacher
    assert not bank.memory_s.requires_grad and bank.memory_s.grad is None


def test_crd_head_unit_norm_and_errors():
    out = CRDHead(3 * 2 * 2, 8)(torch.randn(4, 3, 2, 2))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    bank = MemoryBank(10, 8)
    e = _unit(2, 8, 0)
    with pytest.raises(ShapeError, match="outside"):
        crd_loss(e, e, torch.tensor([0, 10]), bank, n_neg=4)
    with pytest.raises(ShapeError, match="CRDHead"):
        crd_loss(_unit(2, 4, 0), _unit(2, 4, 1), torch.tensor([0, 1]), bank, n_neg=4)
    with pytest.raises(ShapeError, match="index"):
        crd_loss(e, e, torch.tensor([[0, 1]]), bank, n_neg=4)


@pytest.fixture
def one_thread():
    # 150 tiny steps: with 2 OpenMP threads on a loaded 2-core machine each op pays a thread hand-off (~17x slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_crd_aligns_student_with_teacher(one_thread):
    # Free student embeddings trained with CRD against fixed teacher embeddings: afterwards each student embedding
    # is closest to its own teacher embedding (the mutual-information bound at work).
    torch.manual_seed(0)
    n, d = 32, 8
    teacher = _unit(n, d, 20)
    student = torch.nn.Parameter(torch.randn(n, d))
    bank = MemoryBank(n, d, labels=torch.arange(n), generator=torch.Generator().manual_seed(21))
    opt = torch.optim.Adam([student], lr=0.05)
    gen = torch.Generator().manual_seed(22)
    for _ in range(150):
        index = torch.randperm(n, generator=gen)[:8]
        loss = crd_loss(F.normalize(student[index], dim=1), teacher[index], index, bank, n_neg=16, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sim = F.normalize(student.detach(), dim=1) @ teacher.t()
    assert float((sim.argmax(1) == torch.arange(n)).float().mean()) > 0.9


# -- negatives: other classes only, never the anchor (issue 17) -------------------------------------------------------

def test_negatives_never_share_the_anchors_class_exactly():
    # Three unbalanced classes: a redraw loop would leave clashes with probability (n_same/n)^rounds; the exact sampler
    # leaves none, for every anchor, over many draws.
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 70 + [1] * 25 + [2] * 5)[order]
    bank = MemoryBank(100, 8, labels=labels)
    index = torch.arange(100)
    idx = bank.sample_indices(index, 2000, torch.Generator().manual_seed(1))
    neg = idx[:, 1:]
    assert torch.equal(idx[:, 0], index)
    assert not bool((labels[neg] == labels[index][:, None]).any())
    assert not bool((neg == index[:, None]).any())
    # uniform over the allowed pool: every other-class sample is drawn, at about the same rate (2000 draws over a
    # pool of 30 for class 0: each ~67 times; 5 sigma of a binomial is ~40)
    row = neg[labels[index] == 0][0]
    counts = torch.bincount(row, minlength=100)[labels != 0]
    assert int((counts == 0).sum()) == 0 and int(counts.max() - counts.min()) < 80
    assert int(torch.bincount(row, minlength=100)[labels == 0].sum()) == 0


def test_negatives_with_unlabelled_samples_and_without_labels():
    labels = torch.tensor([-1, -1, 0, 0, 1, 1, 2, 2])
    bank = MemoryBank(8, 4, labels=labels)
    idx = bank.sample_indices(torch.arange(8), 500, torch.Generator().manual_seed(2))
    for i in range(8):
        drawn = set(idx[i, 1:].tolist())
        if labels[i] < 0:  # class unknown: anything but itself
            assert drawn == set(range(8)) - {i}
        else:  # labelled samples of the other classes only; an unlabelled one might share the class
            assert drawn == {j for j in range(8) if labels[j] >= 0 and labels[j] != labels[i]}
    plain = MemoryBank(6, 4)
    idx = plain.sample_indices(torch.arange(6), 300, torch.Generator().manual_seed(3))
    for i in range(6):
        assert set(idx[i, 1:].tolist()) == set(range(6)) - {i}  # without labels: never the anchor itself
    with pytest.raises(ValueError, match="at least two classes"):
        MemoryBank(4, 4, labels=torch.tensor([3, 3, -1, 3]))
    with pytest.raises(ShapeError, match="labels"):
        MemoryBank(4, 4, labels=torch.zeros(4, 2, dtype=torch.long))


def test_crd_term_passes_the_training_labels_to_its_bank():
    from kdkit.models import create_model
    from kdkit.recipe import TermSpec
    from kdkit.terms.base import SetupContext, build_term

    torch.manual_seed(0)
    student = create_model("cnn", num_classes=10, in_channels=1, image_size=28, width=8)
    teacher = create_model("cnn_student", num_classes=10, in_channels=1, image_size=28)
    targets = torch.arange(50) % 10
    term = build_term(TermSpec(name="crd", params={"n_neg": 40}))
    term.setup(SetupContext(student=student, teachers=[teacher], example=torch.rand(4, 1, 28, 28), num_classes=10,
                            num_train=50, targets=targets))
    assert torch.equal(term.bank.labels, targets)
    idx = term.bank.sample_indices(torch.arange(50), 40, torch.Generator().manual_seed(0))
    assert not bool((targets[idx[:, 1:]] == targets[:, None]).any())
    one_class = build_term(TermSpec(name="crd"))
    with pytest.raises(ConfigError, match="crd.*at least two"):
        one_class.setup(SetupContext(student=student, teachers=[teacher], example=torch.rand(4, 1, 28, 28),
                                     num_classes=10, num_train=50, targets=torch.zeros(50, dtype=torch.long)))


# -- the step's evaluation: gather / full paths, gradient in the forward, in-place update (issue 17 speed) -------------

def _ref_direction(anchor, memory, idx, tau, n_data, z=None):
    """One direction in float64 through plain autograd (independent of kdkit's closed-form gradient): scores
    exp(<memory[idx], anchor>/tau)/Z, NCE with P_n = 1/n_data, m = N, eps 1e-7; Z = mean score * n_data if not given."""
    out = torch.exp(torch.einsum("bkd,bd->bk", memory[idx], anchor) / tau)
    z = float(out.detach().mean()) * n_data if z is None else z
    x = out / z
    mpn = (idx.shape[1] - 1) / n_data
    loss = -(torch.log(x[:, 0] / (x[:, 0] + mpn + 1e-7)).sum() + torch.log(mpn / (x[:, 1:] + mpn + 1e-7)).sum())
    return loss / idx.shape[0], z


@pytest.mark.parametrize("scoring", ["gather", "full", "auto"])
def test_crd_loss_and_head_gradients_match_a_float64_reference_over_two_steps(scoring):
    # Two steps (Z set on the first, kept on the second; the second scores the memory the first updated), each
    # backward run after crd_loss has updated the bank: loss, both heads' gradients and both embeddings' gradients
    # against float64 autograd on copies of the heads and of the pre-step memory.
    n_data, d, tau = 300, 8, 0.07
    labels = torch.arange(n_data) % 5
    bank = MemoryBank(n_data, d, temperature=tau, labels=labels, generator=torch.Generator().manual_seed(30),
                      scoring=scoring)
    head_s, head_t = CRDHead(10, d), CRDHead(12, d)
    ref_s, ref_t = CRDHead(10, d).double(), CRDHead(12, d).double()
    ref_s.load_state_dict(head_s.state_dict())
    ref_t.load_state_dict(head_t.state_dict())
    gen = torch.Generator().manual_seed(31)
    z_s = z_t = None
    for step in range(2):
        fs, ft = torch.randn(6, 10, generator=gen), torch.randn(6, 12, generator=gen)
        index = torch.randperm(n_data, generator=gen)[:6]
        idx = bank.sample_indices(index, 40, torch.Generator().manual_seed(32 + step))
        mem_s, mem_t = bank.memory_s.double().clone(), bank.memory_t.double().clone()
        es, et = head_s(fs), head_t(ft)
        es.retain_grad()
        et.retain_grad()
        loss = crd_loss(es, et, index, bank, contrast_index=idx)
        for h in (head_s, head_t, ref_s, ref_t):
            h.zero_grad()
        loss.backward()  # after the in-place update of the bank
        res, ret = ref_s(fs.double()), ref_t(ft.double())
        res.retain_grad()
        ret.retain_grad()
        l_s, z_s = _ref_direction(res, mem_t, idx, tau, n_data, z_s)
        l_t, z_t = _ref_direction(ret, mem_s, idx, tau, n_data, z_t)
        (l_s + l_t).backward()
        # float32 scores, exp(.../0.07) amplifies their rounding 14x: observed <= 1.1e-6 relative, 1e-5 leaves 9x
        assert float(loss.detach()) == pytest.approx(float((l_s + l_t).detach()), rel=1e-5)
        assert float(bank.z_s) == pytest.approx(z_s, rel=1e-5) and float(bank.z_t) == pytest.approx(z_t, rel=1e-5)
        for got, want in ((es.grad, res.grad), (et.grad, ret.grad),
                          *((p.grad, q.grad) for p, q in zip(head_s.parameters(), ref_s.parameters(), strict=True)),
                          *((p.grad, q.grad) for p, q in zip(head_t.parameters(), ref_t.parameters(), strict=True))):
            # relative to the largest entry: float32 sums of 41 weighted rows, weights up to ~1/(tau*B); the observed
            # error is <= 6.6e-7, 1e-5 leaves 15x
            assert float((got.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())


# None: one block of anchors (full path), each anchor's 301 rows gathered at once (gather path); 5: blocks of 5 anchors,
# the last of 2, and rows gathered 64 at a time, the last 45
@pytest.mark.parametrize("block_rows", [None, 5])
def test_gather_and_full_paths_agree_and_auto_picks_by_cost(block_rows, monkeypatch):
    from kdkit.losses import contrastive
    from kdkit.losses.contrastive import GATHER_BWD_COST, GATHER_FWD_COST

    n_data, d = 5000, 16
    if block_rows:
        monkeypatch.setattr(contrastive, "_FULL_CHUNK", block_rows * n_data)
        monkeypatch.setattr(contrastive, "_GATHER_ROWS", 64)
    losses, grads = {}, {}
    for scoring in ("gather", "full"):
        bank = MemoryBank(n_data, d, labels=torch.arange(n_data) % 10, generator=torch.Generator().manual_seed(40),
                          scoring=scoring)
        for step in range(2):  # the second step reuses the full path's scratch block
            es = _unit(32, d, 41 + 2 * step).requires_grad_()
            et = _unit(32, d, 42 + 2 * step).requires_grad_()
            index = torch.arange(100, 132) + 50 * step
            loss = crd_loss(es, et, index, bank, n_neg=300, generator=torch.Generator().manual_seed(43 + step))
            loss.backward()
            losses[scoring, step], grads[scoring, step] = loss.detach(), torch.cat([es.grad, et.grad])
    for step in range(2):
        # the same float32 dot products summed in another order: a few ulps of the scores
        assert float(losses["gather", step]) == pytest.approx(float(losses["full", step]), rel=1e-6)
        torch.testing.assert_close(grads["gather", step], grads["full", step], rtol=1e-5,
                                   atol=1e-6 * float(grads["full", step].abs().max()))
    bank = MemoryBank(60000, 4)
    assert bank.paths(4097) == ("full", "gather")  # the Fashion shapes: dense scores, sparse gradient
    assert bank.paths(60000 // GATHER_FWD_COST - 1) == ("gather", "gather")
    assert bank.paths(60000 // GATHER_BWD_COST + 1) == ("full", "full")
    bank.scoring = "full"
    assert bank.paths(10) == ("full", "full")
    with pytest.raises(ValueError, match="scoring"):
        MemoryBank(10, 4, scoring="fast")


@pytest.mark.parametrize("scoring", ["gather", "full"])
def test_bank_update_is_in_place_and_the_reference_formula(scoring):
    bank = MemoryBank(50, 6, generator=torch.Generator().manual_seed(50), scoring=scoring)
    mem_s, ptr = bank.memory_s, bank.memory_s.data_ptr()
    old_s, old_t = bank.memory_s.clone(), bank.memory_t.clone()
    es, et = _unit(5, 6, 51), _unit(5, 6, 52)
    index = torch.tensor([4, 0, 49, 17, 3])
    crd_loss(es, et, index, bank, n_neg=20, generator=torch.Generator().manual_seed(53))
    assert bank.memory_s is mem_s and bank.memory_s.data_ptr() == ptr  # no copy of the memory per step
    for new, old, v in ((bank.memory_s, old_s, es), (bank.memory_t, old_t, et)):
        want = old.double().clone()
        rows = 0.5 * want[index] + 0.5 * v.double()
        want[index] = rows / rows.norm(dim=1, keepdim=True)
        torch.testing.assert_close(new.double(), want, rtol=0, atol=1e-6)  # float32 rounding of unit-norm rows


def test_scores_backward_after_an_update_is_refused_clearly():
    bank = MemoryBank(200, 4, generator=torch.Generator().manual_seed(60))
    anchor = _unit(3, 4, 61).requires_grad_()
    idx = bank.sample_indices(torch.tensor([0, 1, 2]), 30, torch.Generator().manual_seed(62))
    mem = bank.memory_t.double().clone()
    out = bank.scores(anchor, bank.memory_t, idx)
    ref = torch.exp(torch.einsum("bkd,bd->bk", mem[idx], anchor.detach().double()) / bank.temperature)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=0)  # float32 scores, x14 through exp(/0.07)
    w = torch.rand(out.shape, generator=torch.Generator().manual_seed(63))
    (out * w).sum().backward()  # the gradient only reaches the anchors, from the sampled rows
    a64 = anchor.detach().double().requires_grad_()
    (torch.exp(torch.einsum("bkd,bd->bk", mem[idx], a64) / bank.temperature) * w.double()).sum().backward()
    torch.testing.assert_close(anchor.grad.double(), a64.grad, rtol=1e-4, atol=0)
    out = bank.scores(anchor, bank.memory_t, idx)
    bank.update(torch.tensor([0]), _unit(1, 4, 64), _unit(1, 4, 65))
    with pytest.raises(RuntimeError, match="memory was updated .* before the update, or use crd_loss"):
        out.sum().backward()


def test_crd_loss_without_grad_and_bank_checkpoint_resume(tmp_path):
    from safetensors.torch import load_file, save_model

    def make():
        return MemoryBank(400, 8, labels=torch.arange(400) % 4, generator=torch.Generator().manual_seed(70))

    gen = torch.Generator().manual_seed(71)
    batches = [(_unit(8, 8, 72 + 2 * i), _unit(8, 8, 73 + 2 * i), torch.randperm(400, generator=gen)[:8])
               for i in range(4)]
    bank = make()
    with torch.no_grad():  # e.g. a validation pass: a plain value, no gradient computed
        assert not crd_loss(*batches[0][:2], batches[0][2], bank, n_neg=50,
                            generator=torch.Generator().manual_seed(0)).requires_grad
    bank = make()
    for es, et, index in batches[:2]:
        crd_loss(es, et, index, bank, n_neg=50, generator=torch.Generator().manual_seed(1))
    save_model(bank, str(tmp_path / "bank.safetensors"))
    resumed = make()
    resumed.load_state_dict(load_file(str(tmp_path / "bank.safetensors")))
    for es, et, index in batches[2:]:
        a = crd_loss(es.requires_grad_(), et, index, bank, n_neg=50, generator=torch.Generator().manual_seed(2))
        b = crd_loss(es.detach().requires_grad_(), et, index, resumed, n_neg=50,
                     generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(getattr(bank, name), getattr(resumed, name))
