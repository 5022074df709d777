"""qinterp.analysis against numpy/scipy evaluations of the definitions (PROTOCOLS.md §1.3), on
real activations: stories260K and SmolLM2 at the paper's hook (mlp.hook_act) over prompts of the
four paper CSVs."""
import csv
import math

import numpy as np
import pytest
import torch

import qinterp
from qinterp import analysis as qa
from conftest import SHARED, SMOLLM2, STORIES

CSVS = ["boolq", "toxicity", "piqa", "hellaswag"]


def paper_prompts(per_csv):
    out = []
    for name in CSVS:
        with open(SHARED / "datasets" / "paper1" / f"{name}.csv", newline="") as f:
            rows = csv.DictReader(f)
            for i, row in enumerate(rows):
                if i == per_csv:
                    break
                out.append(row["prompt"])
    return out


def left_pad(seqs, pad):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.int64)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = True
    return ids, mask


def run_hooks(model, batches, layers, sinks):
    """Forward every (ids, mask) batch; at blocks.L.mlp.hook_act call sink(L, act, mask) for each
    sink. Returns the materialized real-token activations per layer (the reference's input)."""
    seen = {L: [] for L in layers}
    handles = []
    for L in layers:
        def fn(act, mask, L=L):
            seen[L].append(act[mask].double().numpy())
            for s in sinks:
                s(L, act, mask)
        handles.append(model.hooks.add(f"blocks.{L}.mlp.hook_act", fn))
    try:
        with torch.no_grad():
            for ids, mask in batches:
                model.forward(ids, mask)
    finally:
        for h in handles:
            model.hooks.remove(h)
    return {L: np.concatenate(v) for L, v in seen.items()}


@pytest.fixture(scope="module")
def stories_batches(stories_tok):
    seqs = [stories_tok.encode(p)[:200] for p in paper_prompts(12)]
    return [left_pad(seqs[i:i + 8], 0) for i in range(0, len(seqs), 8)]


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    seqs = [tok(p)["input_ids"][:160] for p in paper_prompts(10)]
    batches = [left_pad(seqs[i:i + 8], tok.eos_token_id) for i in range(0, len(seqs), 8)]
    return qinterp.load_model(SMOLLM2), batches


def numpy_abs_r(x):
    """|r| over the strict upper triangle, NeuroX style: corrcoef on the materialized matrix."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(x.T)
    return np.abs(r[np.triu_indices(x.shape[1], 1)])


def check_histogram(res, x, label):
    n = x.shape[1]
    v = numpy_abs_r(x)
    assert not np.isnan(v).any(), f"{label}: test data has constant neurons"
    edges = np.linspace(0, 1, 11)
    ref, _ = np.histogram(np.minimum(v, 1.0), bins=edges)
    got = res["histogram"].numpy()
    assert res["pairs_total"] == n * (n - 1) // 2 == res["pairs_counted"] + res["pairs_excluded"]
    assert got.sum() == n * (n - 1) // 2 == ref.sum()
    near = int((np.abs(v[:, None] - edges[None, 1:-1]) < 1e-6).any(axis=1).sum())
    diff = int(np.abs(got - ref).sum())
    print(f"{label}: {n} neurons, {x.shape[0]} tokens, histogram {got.tolist()}, "
          f"pairs within 1e-6 of an edge: {near}, bin differences: {diff}")
    assert diff <= 2 * near
    assert np.allclose(res["bin_edges"].numpy(), edges)


def test_correlation_and_dead_stories260k(stories_model, stories_batches):
    layers = [0, 2, 4]
    corr = {L: qa.Correlation() for L in layers}
    dead = {L: qa.DeadNeurons() for L in layers}
    x = run_hooks(stories_model, stories_batches, layers,
                  [lambda L, a, m: corr[L].update(a, m), lambda L, a, m: dead[L].update(a, m)])
    for L in layers:
        check_histogram(corr[L].result(), x[L], f"stories260K layer {L}")
        ref_dead = np.all((x[L].astype(np.float32) > -0.1) & (x[L].astype(np.float32) < 0.1), axis=0)
        r = dead[L].result()
        assert np.array_equal(r["dead"].numpy(), ref_dead)
        assert r["count"] == int(ref_dead.sum()) and r["tokens"] == x[L].shape[0]
        assert np.array_equal(r["min"].numpy(), x[L].min(0)) and np.array_equal(r["max"].numpy(), x[L].max(0))


def test_correlation_and_dead_smollm2(smollm2):
    model, batches = smollm2
    layers = [0, 14, 29]  # first / middle / last, as the paper hooks its models
    corr = {L: qa.Correlation() for L in layers}
    dead = {L: qa.DeadNeurons() for L in layers}
    x = run_hooks(model, batches, layers, [lambda L, a, m: corr[L].update(a, m), lambda L, a, m: dead[L].update(a, m)])
    for L in layers:
        check_histogram(corr[L].result(), x[L], f"SmolLM2 layer {L}")
        ref = np.all((x[L].astype(np.float32) > -0.1) & (x[L].astype(np.float32) < 0.1), axis=0)
        assert np.array_equal(dead[L].result()["dead"].numpy(), ref)
        print(f"SmolLM2 layer {L}: {int(ref.sum())} dead of {ref.size}")


def test_dead_band_is_strict_and_relu_mode():
    x = torch.tensor([[0.1, -0.0999, 0.05, 0.0], [-0.1, 0.0999, 0.0, 2e-6]], dtype=torch.float32)
    d = qa.DeadNeurons()
    d.update(x)
    # 0.1 and -0.1 are not strictly inside (-0.1, 0.1): neuron 0 is alive
    assert d.result()["dead"].tolist() == [False, True, True, True]
    assert d.result()["outside"].tolist() == [2, 0, 0, 0]
    r = qa.DeadNeurons.relu(1e-6)
    r.update(x)
    assert r.result()["dead"].tolist() == [False, False, False, False]  # 2e-6 is not |a| < 1e-6
    z = qa.DeadNeurons.relu(1e-6)
    z.update(torch.tensor([[0.0, 5e-7], [-9e-7, 0.0]]))
    assert z.result()["dead"].tolist() == [True, True]


def test_neuron_stats_match_numpy(stories_model, stories_batches):
    st = qa.NeuronStats(bins=16, hist_lo=-2, hist_hi=2)
    x = run_hooks(stories_model, stories_batches, [3], [lambda L, a, m: st.update(a, m)])[3]
    r = st.result()
    assert r["tokens"] == x.shape[0]
    np.testing.assert_allclose(r["mean"].numpy(), x.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r["variance"].numpy(), x.var(0), rtol=1e-10, atol=1e-14)
    assert np.array_equal(r["absmax"].numpy(), np.abs(x).max(0))
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(r["active_fraction"].numpy(), ((x32 <= -0.1) | (x32 >= 0.1)).mean(0))
    edges = np.linspace(-2, 2, 17)
    for j in [0, 50, 171]:
        h, _ = np.histogram(x[:, j], bins=edges)
        inside = x[:, j][(x[:, j] >= -2) & (x[:, j] < 2)]
        h_open, _ = np.histogram(inside, bins=edges)  # np's last bin is closed; ours is [lo, hi)
        assert np.array_equal(r["histogram"][j].numpy(), h_open)
        assert r["underflow"][j] == (x[:, j] < -2).sum() and r["overflow"][j] == (x[:, j] >= 2).sum()


def _batches_of(x, sizes):
    out, s = [], 0
    for n in sizes:
        out.append(x[s:s + n])
        s += n
    return out


def test_merge_of_shards_equals_one_pass(stories_model, stories_batches):
    acts = []
    run_hooks(stories_model, stories_batches, [2], [lambda L, a, m: acts.append(a[m].clone())])
    kinds = [lambda: qa.Correlation(tile=64, chunk=300), qa.DeadNeurons, lambda: qa.NeuronStats(bins=8)]
    for make in kinds:
        one = make()
        for b in acts:
            one.update(b)
        shards = [make() for _ in range(3)]
        for i, b in enumerate(acts):  # the same batches, dealt to three shards
            shards[i % 3].update(b)
        merged = shards[0]
        merged.merge(shards[1])
        merged.merge(shards[2])
        r1, r2 = one.result(), merged.result()
        for k, v in r1.items():
            if isinstance(v, torch.Tensor) and v.dtype in (torch.int64, torch.bool):
                assert torch.equal(v, r2[k]), f"{one.kind}.{k}"
            elif isinstance(v, torch.Tensor):
                torch.testing.assert_close(r2[k], v, rtol=1e-12, atol=1e-12 * max(1.0, float(v.abs().max())))
            else:
                assert v == pytest.approx(r2[k], rel=1e-12), f"{one.kind}.{k}"
        if one.kind == "Correlation":
            torch.testing.assert_close(merged.matrix(), one.matrix(), rtol=0, atol=1e-12, equal_nan=True)


def test_save_restore_continue_equals_uninterrupted(tmp_path, stories_model, stories_batches):
    acts = []
    run_hooks(stories_model, stories_batches, [1], [lambda L, a, m: acts.append(a[m].clone())])
    half = len(acts) // 2
    for make in [lambda: qa.Correlation(tile=100), qa.DeadNeurons, qa.NeuronStats]:
        whole = make()
        for b in acts:
            whole.update(b)
        first = make()
        for b in acts[:half]:
            first.update(b)
        with qa.ResultStore(str(tmp_path / "run.h5"), "a") as store:
            store.save(f"state/{first.kind}", first, {"batches_done": half})
        del first
        store = qa.ResultStore(str(tmp_path / "run.h5"), "r")
        assert store.attrs(f"state/{whole.kind}")["batches_done"] == half
        resumed = make()
        resumed.restore(store.load_state(f"state/{whole.kind}"))
        store.close()
        for b in acts[half:]:
            resumed.update(b)
        s1, s2 = whole.state(), resumed.state()
        assert s1.kind == s2.kind and s1.tensors.keys() == s2.tensors.keys()
        for k in s1.tensors:
            assert torch.equal(s1.tensors[k], s2.tensors[k]), f"{whole.kind}.{k}"


def test_non_finite_activation_names_hook_and_token():
    d = qa.DeadNeurons()
    d.label = "blocks.3.mlp.hook_act"
    d.update(torch.zeros(5, 4))
    act = torch.zeros(2, 3, 4)
    mask = torch.tensor([[False, True, True], [True, True, True]])
    act[1, 2, 3] = float("nan")  # real token 4 of this batch (row-major over the mask): token 9 overall
    with pytest.raises(qinterp.Error, match=r"blocks\.3\.mlp\.hook_act.*NaN at token 9 .*neuron 3"):
        d.update(act, mask)
    assert d.tokens == 5  # nothing from the refused update was counted
    for acc in [qa.Correlation(), qa.NeuronStats()]:
        acc.label = "blocks.0.mlp.hook_act"
        with pytest.raises(qinterp.Error, match=r"blocks\.0\.mlp\.hook_act.*\+Inf at token 1 "):
            acc.update(torch.tensor([[1.0, 2.0], [float("inf"), 0.0]]))
        assert acc.tokens == 0
    with pytest.raises(qinterp.Error, match="Drift.*NaN"):
        qa.Drift().update(torch.zeros(3, 2), torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [0.0, 0.0]]))


def test_inputs_that_are_mistakes_are_refused():
    # each would otherwise be read silently (0.5 as "correct", 0.7 truncated to token 0) or end in
    # a torch reshape error
    cal = qa.Calibration()
    with pytest.raises(qinterp.Error, match=r"correct must be bool or 0/1, got 0.5 for example 1"):
        cal.update(torch.tensor([0.9, 0.6]), torch.tensor([1.0, 0.5]))
    cal.update(torch.tensor([0.9, 0.6]), torch.tensor([1, 0]))  # 0/1 integers are fine
    assert cal.result()["accuracy"] == 0.5
    with pytest.raises(qinterp.Error, match="targets must be integer token ids"):
        qa.Perplexity().update(torch.randn(1, 3, 8), torch.rand(1, 3))
    for acc in [qa.DeadNeurons(), qa.NeuronStats(), qa.Correlation()]:
        with pytest.raises(qinterp.Error, match="no neurons"):
            acc.update(torch.zeros(5, 0))
    with pytest.raises(qinterp.Error, match="Drift.*no neurons"):
        qa.Drift().update(torch.zeros(5, 0), torch.zeros(5, 0))


def test_zero_variance_neurons_reported_not_nan():
    torch.manual_seed(0)
    x = torch.randn(400, 6, dtype=torch.float64)
    x[:, 2] = 3.25
    c = qa.Correlation()
    c.update(x)
    r = c.result()
    assert r["zero_variance"].tolist() == [2]
    assert r["pairs_excluded"] == 5 and r["pairs_counted"] == 10 and r["pairs_total"] == 15
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(x.numpy().T)
    np.testing.assert_allclose(c.matrix().numpy(), ref, rtol=0, atol=1e-12)  # NaN row/column as numpy


@pytest.mark.parametrize("cpu_kernel", [True, False])
def test_correlation_of_tiny_and_huge_neurons_matches_numpy(cpu_kernel):
    # float32 activations from 1e-30 to 1e30: squares beyond float32's range must not turn a
    # neuron into "zero variance" or its |r| into noise (float64 numpy is the oracle)
    torch.manual_seed(3)
    z = torch.randn(2000, 3)
    base = z @ torch.randn(3, 40) + 0.7 * torch.randn(2000, 40) + 2.0
    x = (base * torch.logspace(-30, 30, 40)).to(torch.float32)
    c = qa.Correlation(cpu_kernel=cpu_kernel, chunk=512)
    for part in x.split(600):
        c.update(part)
    res = c.result()
    assert res["pairs_excluded"] == 0
    check_histogram(res, x.double().numpy(), f"magnitudes 1e-30..1e30 (cpu_kernel={cpu_kernel})")
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(x.double().numpy().T)
    np.testing.assert_allclose(c.matrix().numpy(), ref, rtol=0, atol=1e-6)


def test_clustering_matches_scipy(stories_model, stories_batches):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    c = qa.Correlation(cluster_threshold=0.5)
    x = run_hooks(stories_model, stories_batches, [4], [lambda L, a, m: c.update(a, m)])[4]
    r = c.result()
    d = 1 - np.abs(np.corrcoef(x.T))
    np.fill_diagonal(d, 0)
    ref = fcluster(linkage(squareform(d, checks=False), method="average"), t=0.5, criterion="distance")
    print(f"stories260K layer 4: {r['independent_neurons']} independent neurons of {x.shape[1]} (scipy {ref.max()})")
    assert r["independent_neurons"] == ref.max()
    # the same partition, up to label names
    ours = r["cluster"].numpy()
    pairs = {(a, b) for a, b in zip(ours, ref)}
    assert len(pairs) == ref.max()


def test_top_pairs():
    torch.manual_seed(1)
    x = torch.randn(1000, 40, dtype=torch.float64)
    x[:, 30] = x[:, 3] + 0.01 * torch.randn(1000, dtype=torch.float64)
    x[:, 12] = -x[:, 7] + 0.1 * torch.randn(1000, dtype=torch.float64)
    c = qa.Correlation(top_k=2, tile=16)
    c.update(x)
    r = c.result()
    assert [(int(i), int(j)) for i, j in zip(r["top_i"], r["top_j"])] == [(3, 30), (7, 12)]
    ref = np.abs(np.corrcoef(x.numpy().T))
    np.testing.assert_allclose(r["top_values"].numpy(), [ref[3, 30], ref[7, 12]], rtol=1e-12)


def authors_ace(conf, correct, n_bins=10):
    """The paper code's ACE: sort by confidence, numpy.array_split into equal-count bins,
    mean |accuracy - confidence| over the bins."""
    order = np.argsort(conf)
    conf, correct = conf[order], correct[order]
    gaps = [abs(a.mean() - c.mean()) for a, c in zip(np.array_split(correct, n_bins), np.array_split(conf, n_bins))
            if len(c)]
    return float(np.mean(gaps))


@pytest.mark.parametrize("n", [7, 10, 1003])
def test_ace_matches_authors_formula(n):
    rng = np.random.default_rng(n)
    conf = rng.uniform(0.2, 1.0, n)
    correct = rng.uniform(size=n) < conf
    cal = qa.Calibration()
    for part in np.array_split(np.arange(n), 3):
        cal.update(torch.from_numpy(conf[part]), torch.from_numpy(correct[part]))
    r = cal.result()
    assert r["ace"] == pytest.approx(authors_ace(conf, correct.astype(float)), rel=1e-12)
    assert r["accuracy"] == pytest.approx(correct.mean(), rel=1e-12)
    assert r["confidence"] == pytest.approx(conf.mean(), rel=1e-12)
    assert r["ace_count"].tolist() == [len(b) for b in np.array_split(np.arange(n), 10)]


def test_ece_hand_computed():
    conf = torch.tensor([0.05, 0.15, 0.15, 0.25, 0.3, 0.95, 0.95, 0.95], dtype=torch.float64)
    ok = torch.tensor([0, 1, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    cal = qa.Calibration()
    cal.update(conf, ok)
    r = cal.result()
    # bins (0, .1]: {.05: wrong}; (.1, .2]: {.15 right, .15 wrong}; (.2, .3]: {.25 wrong, .3 right};
    # (.9, 1]: {.95 right x2, .95 wrong}  ->  (.05 + 2*.35 + 2*.225 + 3*(.95 - 2/3)) / 8
    assert r["ece"] == pytest.approx(2.05 / 8, rel=1e-12)
    assert r["ece_count"].tolist() == [1, 2, 2, 0, 0, 0, 0, 0, 0, 3]
    assert r["accuracy"] == pytest.approx(4 / 8)


def test_calibration_from_logits_and_merge_order():
    torch.manual_seed(3)
    logits, gold = torch.randn(50, 7), torch.randint(0, 7, (50,))
    a, b = qa.Calibration(), qa.Calibration()
    a.update_logits(logits[:20], gold[:20])
    b.update_logits(logits[20:], gold[20:])
    b.merge(a)  # other order than the data
    p = logits.softmax(-1)
    conf, pred = p.max(-1)
    r = b.result()
    assert r["accuracy"] == pytest.approx((pred == gold).double().mean().item())
    assert r["ace"] == pytest.approx(authors_ace(conf.double().numpy(), (pred == gold).double().numpy()), rel=1e-6)
    with pytest.raises(qinterp.Error, match="not a probability"):
        qa.Calibration().update(torch.tensor([0.5, 1.5]), torch.tensor([True, False]))


def test_drift_matches_numpy(stories_batches):
    full = qinterp.load_model(STORIES / "stories260K.bin")
    quant = qinterp.load_model(STORIES / "stories260K.bin", quant="nf4")
    drift = qa.Drift()
    got = {}

    def grab(key):
        return lambda a, m: got.__setitem__(key, (a.clone(), m.clone()))

    fa, qa_ = [], []
    for ids, mask in stories_batches:
        h1 = full.hooks.add("blocks.1.mlp.hook_act", grab("f"))
        h2 = quant.hooks.add("blocks.1.mlp.hook_act", grab("q"))
        with torch.no_grad():
            full.forward(ids, mask)
            quant.forward(ids, mask)
        full.hooks.remove(h1)
        quant.hooks.remove(h2)
        (a, m), (b, _) = got["f"], got["q"]
        drift.update(a, b.float(), m)
        fa.append(a[m].double().numpy())
        qa_.append(b[m].float().double().numpy())
    a, b = np.concatenate(fa), np.concatenate(qa_)
    r = drift.result()
    np.testing.assert_allclose(r["mse"].numpy(), ((a - b) ** 2).mean(0), rtol=1e-10)
    np.testing.assert_allclose(r["cosine"].numpy(), (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0)), rtol=1e-10)
    ref_r = np.array([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])])
    np.testing.assert_allclose(r["correlation"].numpy(), ref_r, rtol=1e-9)
    da = np.all((a.astype(np.float32) > -0.1) & (a.astype(np.float32) < 0.1), 0)
    db = np.all((b.astype(np.float32) > -0.1) & (b.astype(np.float32) < 0.1), 0)
    assert np.array_equal(r["dead_full"].numpy(), da) and np.array_equal(r["dead_quant"].numpy(), db)
    assert r["dead_agreement"] == pytest.approx((da == db).mean())
    print(f"stories260K layer 1, fp32 vs nf4: mean corr {np.nanmean(ref_r):.4f}, mean mse {r['mse'].mean():.3g}")


def hf_sliding_window(model, ids, ctx, stride):
    """Hugging Face's perplexity recipe (docs 'Perplexity of fixed-length models'), in float64."""
    nll, count, prev_end, L = 0.0, 0, 0, ids.numel()
    for begin in range(0, L, stride):
        end = min(begin + ctx, L)
        trg = end - prev_end
        inp = ids[begin:end]
        labels = inp.clone()
        labels[:-trg] = -100
        with torch.no_grad():
            logp = torch.log_softmax(model.forward(inp[None])[0].double(), -1)
        lab = labels[1:]
        keep = lab != -100
        nll -= logp[:-1][keep].gather(1, lab[keep][:, None]).sum().item()
        count += int(keep.sum())
        prev_end = end
        if end == L:
            break
    return nll, count


@pytest.mark.parametrize("ctx,stride", [(128, 128), (128, 48), (200, 1)])
def test_sliding_window_perplexity(stories_model, stories_tok, ctx, stride):
    ids = torch.tensor(sum((stories_tok.encode(p) for p in paper_prompts(2)), []))[:700]
    if stride == 1:
        ids = ids[:260]
    r = qa.perplexity(stories_model, ids, ctx, stride)
    nll, count = hf_sliding_window(stories_model, ids, ctx, stride)
    windows = math.ceil(max(ids.numel() - ctx, 0) / stride) + 1
    # stride < ctx: every token after the first is scored once; stride == ctx: the first token of
    # each window has no context and is not scored (as in the recipe)
    assert r["tokens"] == count == ids.numel() - (1 if stride < ctx else windows)
    assert r["nll"] == pytest.approx(nll, rel=1e-6)
    assert r["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-6)


def test_perplexity_accumulator_masks_padding():
    torch.manual_seed(0)
    logits, tgt = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    p = qa.Perplexity()
    p.update(logits, tgt, mask)
    lp = torch.log_softmax(logits.double(), -1).gather(2, tgt[..., None])[..., 0]
    assert p.result()["nll"] == pytest.approx(-lp[mask].sum().item(), rel=1e-6)
    assert p.result()["tokens"] == 8


def test_on_a_plain_pytorch_model():
    """The accumulators take any tensor: here from a forward hook on a transformers model."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    hf = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 100, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[0, :7] = False
    dead, corr, seen = qa.DeadNeurons(lo=-0.02, hi=0.02), qa.Correlation(), []

    def hook(mod, inp, out):
        dead.update(out, mask)
        corr.update(out, mask)
        seen.append(out[mask].double().numpy())

    h = hf.model.layers[1].mlp.act_fn.register_forward_hook(hook)
    with torch.no_grad():
        hf(ids, attention_mask=mask.long())
    h.remove()
    x = seen[0]
    ref = np.all((x.astype(np.float32) > -0.02) & (x.astype(np.float32) < 0.02), 0)
    assert np.array_equal(dead.result()["dead"].numpy(), ref)
    np.testing.assert_allclose(corr.matrix().numpy(), np.corrcoef(x.T), atol=1e-6)


@pytest.mark.parametrize("cpu_kernel", [True, False])
def test_correlation_bins_on_exact_edges(cpu_kernel):
    """|r| exactly 0.5 goes to [0.5, 0.6) and |r| = 1 to the last bin, on both paths: the pairs are
    built from small integers, so every product and sum is exact."""
    x = torch.tensor([[1, 1, 1, -1, 2],
                      [-1, 0, -1, 1, 0],
                      [0, -1, 0, 0, -2],
                      [0, 0, 0, 0, 0]], dtype=torch.float32)
    # pairs: (0,1) 0.5, (0,2) 1, (0,3) -1, (0,4) 0.5, (1,2) 0.5, (1,3) -0.5, (1,4) 1, (2,3) -1,
    #        (2,4) 0.5, (3,4) -0.5
    ref = numpy_abs_r(x.numpy().astype(np.float64))
    assert sorted(ref.tolist()) == [0.5] * 6 + [1.0] * 4
    c = qa.Correlation(cpu_kernel=cpu_kernel)
    c.update(x)
    r = c.result()
    assert r["histogram"].tolist() == [0, 0, 0, 0, 0, 6, 0, 0, 0, 4]
    assert r["pairs_counted"] == 10 and r["pairs_excluded"] == 0


def test_pairs_counted_equals_numpys_defined_pairs():
    """pairs_counted is the number of pairs numpy gives a number for (not NaN), not C(N, 2) by
    construction: two constant neurons leave 2 * 4 + 1 pairs undefined."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g)
    x[:, 2] = 3.0
    x[:, 5] = -1.0
    c = qa.Correlation()
    c.update(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        defined = int((~np.isnan(numpy_abs_r(x.numpy().astype(np.float64)))).sum())
    r = c.result()
    assert r["pairs_counted"] == defined == 15 - 9
    assert r["histogram"].sum().item() == defined


def test_dead_band_compares_in_the_activation_dtype():
    """numpy compares an array with a Python float in the array's dtype (NEP 50): float32(1e-6)
    is not below float32(1e-6), so that neuron is alive in ReLU mode (in float64 it would be
    dead); fp16 activations compare against fp16(0.1) = 0.0999755859375."""
    eps32 = float(np.float32(1e-6))
    x = torch.tensor([[eps32, -eps32, float(np.nextafter(np.float32(1e-6), 0))]], dtype=torch.float32)
    r = qa.DeadNeurons.relu(1e-6)
    r.update(x)
    ref = np.abs(x.numpy()) < 1e-6
    assert r.result()["dead"].tolist() == ref[0].tolist() == [False, False, True]
    inside = float(np.nextafter(np.float32(0.1), np.float32(0)))
    d = qa.DeadNeurons()
    d.update(torch.tensor([[inside, -inside, float(np.float32(0.1))]], dtype=torch.float32))
    assert d.result()["dead"].tolist() == [True, True, False]
    h = torch.tensor([[0.0999755859375, -0.0999755859375, 0.0999]], dtype=torch.float16)
    dh = qa.DeadNeurons()
    dh.update(h)
    ref = ((h.numpy() > -0.1) & (h.numpy() < 0.1))[0]
    assert dh.result()["dead"].tolist() == ref.tolist() == [False, False, True]


def test_ace_tie_rule_and_bins_of_two():
    """Ties in confidence are ordered wrong before right. Two bins of two: (0.8, wrong),
    (0.9, wrong) | (0.9, right), (0.9, right) -> (|0 - 0.85| + |1 - 0.9|) / 2 = 0.475; the other
    tie order would give 0.375."""
    conf = torch.tensor([0.9, 0.9, 0.8, 0.9], dtype=torch.float64)
    ok = torch.tensor([True, False, False, True])
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]):
        cal = qa.Calibration(bins=2)
        for i in order:
            cal.update(conf[i:i + 1], ok[i:i + 1])
        r = cal.result()
        assert r["ace"] == pytest.approx(0.475, abs=1e-15)
        assert r["ace_count"].tolist() == [2, 2]
        assert r["ace_accuracy"].tolist() == [0.0, 1.0]


def test_calibration_refuses_gold_outside_the_vocabulary():
    logits = torch.randn(3, 5)
    with pytest.raises(qinterp.Error, match="gold id 5 .*example 1.*outside the vocabulary"):
        qa.Calibration().update_logits(logits, torch.tensor([0, 5, 1]))
    with pytest.raises(qinterp.Error, match="gold id -1"):
        qa.Calibration().update_logits(logits, torch.tensor([0, 1, -1]))
    with pytest.raises(qinterp.Error, match="integer gold ids"):
        qa.Calibration().update_logits(logits, torch.tensor([0.0, 1.0, 2.0]))


def test_store_refuses_dot_components_and_missing_folders(tmp_path):
    with qa.ResultStore(str(tmp_path / "s.h5"), "w") as s:
        for bad in ("a/../b", "./a", "a/./b", ".."):
            with pytest.raises(qinterp.Error, match="component"):
                s.write(bad, torch.zeros(2))
        with pytest.raises(qinterp.Error):
            s.write_result("g", {"x": object()})
        with pytest.raises(qinterp.Error):
            s.write_result("g", {"x": "text"})
        assert s.list("") == []
    with pytest.raises(qinterp.Error, match="the folder .*nowhere does not exist"):
        qa.ResultStore(str(tmp_path / "nowhere" / "s.h5"), "w")


def test_to_a_gpu_that_is_not_there_is_an_error(stories_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the test is about machines without one")
    for acc in (qa.DeadNeurons(), qa.NeuronStats(), qa.Correlation(), qa.Drift()):
        with pytest.raises(qinterp.Error, match="no CUDA device"):
            acc.to("cuda")
    with pytest.raises(qinterp.Error, match="no CUDA device"):
        stories_model.to("cuda")
    with pytest.raises(qinterp.Error, match="unknown device"):
        qa.DeadNeurons().to("tpu:0")
