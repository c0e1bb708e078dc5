"""DynamicState against a plain-Python transcription of the paper's Algorithm 1."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dynrcnn.dynamic import DynamicConfig, DynamicState, nan_median


def algorithm1(config: DynamicConfig, sequence):
    """The paper's Algorithm 1 with this package's robustness rules, in plain Python."""
    thr, beta = config.init_iou, config.init_beta
    ious, errs, trace = [], [], []
    for it, (kth_iou, kth_err) in enumerate(sequence, start=1):
        ious.append(kth_iou)
        errs.append(kth_err)
        if it % config.interval == 0:
            valid = [v for v in ious if not math.isnan(v)]
            if valid and config.update_iou:
                thr = min(max(float(np.mean(valid)), config.iou_floor), config.iou_cap)
            valid = [v for v in errs if not math.isnan(v)]
            if valid and config.update_beta:
                beta = min(max(float(np.median(valid)), config.beta_min), config.beta_max)
            ious, errs = [], []
        trace.append((thr, beta))
    return trace


def random_sequence(rng: random.Random, length: int, nan_rate: float = 0.1):
    seq = []
    for _ in range(length):
        iou = rng.uniform(0.3, 0.95) if rng.random() > nan_rate else math.nan
        err = rng.uniform(0.0, 1.5) if rng.random() > nan_rate else math.nan
        seq.append((iou, err))
    return seq


@pytest.mark.parametrize("variant", ["paper", "t_cap"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("interval", [1, 7, 100])
def test_matches_algorithm1_over_long_sequence(seed, interval, variant):
    config = DynamicConfig(interval=interval, variant=variant)
    rng = random.Random(seed)
    seq = random_sequence(rng, 1000)
    state = DynamicState(config)
    expected = algorithm1(config, seq)
    for (iou, err), (thr, beta) in zip(seq, expected):
        state.record(torch.tensor(iou), torch.tensor(err))
        assert float(state.iou_thr) == pytest.approx(thr, abs=1e-6)
        assert float(state.beta) == pytest.approx(beta, abs=1e-6)


def test_median_matches_numpy_for_even_and_odd_counts():
    for values in ([3.0, 1.0, 2.0, 10.0], [5.0, 1.0, 2.0], [1.0, math.nan, 4.0, math.nan]):
        got = float(nan_median(torch.tensor(values)))
        want = float(np.median([v for v in values if not math.isnan(v)]))
        assert got == pytest.approx(want)
    assert math.isnan(float(nan_median(torch.tensor([math.nan, math.nan]))))


def test_all_nan_interval_keeps_previous_values():
    state = DynamicState(DynamicConfig(interval=4))
    for _ in range(4):
        state.record(torch.tensor(0.7), torch.tensor(0.2))
    thr, beta = float(state.iou_thr), float(state.beta)
    assert thr == pytest.approx(0.7) and beta == pytest.approx(0.2)
    for _ in range(4):
        state.record(torch.tensor(math.nan), torch.tensor(math.nan))
    assert float(state.iou_thr) == thr and float(state.beta) == beta
    assert not math.isnan(float(state.iou_thr)) and not math.isnan(float(state.beta))


def test_beta_stays_within_bounds_and_t_above_floor():
    config = DynamicConfig(interval=3, beta_min=0.01, beta_max=1.0, iou_floor=0.4)
    state = DynamicState(config)
    rng = random.Random(5)
    for _ in range(300):
        state.record(torch.tensor(rng.uniform(0.0, 1.0)), torch.tensor(rng.uniform(0.0, 5.0)))
        assert 0.01 <= float(state.beta) <= 1.0
        assert float(state.iou_thr) >= 0.4 - 1e-7
    state.record(torch.tensor(0.1), torch.tensor(0.0))
    state.record(torch.tensor(0.1), torch.tensor(0.0))
    state.record(torch.tensor(0.1), torch.tensor(0.0))
    assert float(state.beta) == pytest.approx(0.01) and float(state.iou_thr) == pytest.approx(0.4)


def test_t_rises_and_beta_falls_with_improving_proposals():
    state = DynamicState(DynamicConfig(interval=10))
    thrs, betas = [], []
    for it in range(100):
        quality = it / 100
        state.record(torch.tensor(0.5 + 0.4 * quality), torch.tensor(1.0 - 0.8 * quality))
        thrs.append(float(state.iou_thr))
        betas.append(float(state.beta))
    assert thrs[-1] > 0.8 and betas[-1] < 0.3
    assert all(b >= a for a, b in zip(thrs, thrs[1:]))
    assert all(b <= a for a, b in zip(betas, betas[1:]))


def test_per_image_statistics_are_averaged_over_valid_images():
    state = DynamicState(DynamicConfig(interval=1, per_image=True))
    state.record(torch.tensor([0.6, math.nan, 0.8]), torch.tensor([0.2, 0.4, math.nan]))
    assert float(state.iou_thr) == pytest.approx(0.7)
    assert float(state.beta) == pytest.approx(0.3)


def test_ablation_switches_freeze_t_or_beta():
    dla_only = DynamicState(DynamicConfig(interval=1, update_beta=False))
    dsl_only = DynamicState(DynamicConfig(interval=1, update_iou=False))
    for s in (dla_only, dsl_only):
        s.record(torch.tensor(0.8), torch.tensor(0.1))
    assert float(dla_only.iou_thr) == pytest.approx(0.8) and float(dla_only.beta) == 1.0
    assert float(dsl_only.iou_thr) == pytest.approx(0.4)
    assert float(dsl_only.beta) == pytest.approx(0.1)


def test_state_dict_round_trip_mid_interval_continues_identically():
    config = DynamicConfig(interval=10)
    seq = random_sequence(random.Random(11), 95)
    a = DynamicState(config)
    for iou, err in seq[:43]:
        a.record(torch.tensor(iou), torch.tensor(err))
    b = DynamicState(config)
    b.load_state_dict(a.state_dict())
    assert b.records == 43
    for iou, err in seq[43:]:
        a.record(torch.tensor(iou), torch.tensor(err))
        b.record(torch.tensor(iou), torch.tensor(err))
        assert torch.equal(a.iou_thr, b.iou_thr) and torch.equal(a.beta, b.beta)
    b_state = b.state_dict()
    for key, value in a.state_dict().items():
        want, got = torch.nan_to_num(value, nan=-7.0), torch.nan_to_num(b_state[key], nan=-7.0)
        assert torch.equal(want, got)


def test_record_returns_whether_it_updated():
    state = DynamicState(DynamicConfig(interval=3))
    flags = [state.record(torch.tensor(0.5), torch.tensor(0.5)) for _ in range(6)]
    assert flags == [False, False, True, False, False, True]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="k_iou"):
        DynamicConfig(k_iou=0)
    with pytest.raises(ValueError, match="interval"):
        DynamicConfig(interval=0)
    with pytest.raises(ValueError, match="beta_min"):
        DynamicConfig(beta_min=2.0)
    with pytest.raises(ValueError, match="iou_floor"):
        DynamicConfig(init_iou=0.3, iou_floor=0.4)
    with pytest.raises(ValueError, match="'t_cap' caps T at 0.6: init_iou=0.7"):
        DynamicConfig(init_iou=0.7, iou_floor=0.7, variant="t_cap")


def test_t_cap_stops_t_at_the_cap_and_only_there():
    """t_cap follows the paper's T up to 0.6 and stays there; the paper's T goes on."""
    ious = [0.55] * 10 + [0.8] * 10
    trace = {}
    for variant in ("paper", "t_cap"):
        state = DynamicState(DynamicConfig(interval=10, variant=variant))
        trace[variant] = []
        for iou in ious:
            state.record(torch.tensor(iou), torch.tensor(0.5))
            trace[variant].append(float(state.iou_thr))
    assert trace["t_cap"][9] == trace["paper"][9] == pytest.approx(0.55)
    assert trace["paper"][19] == pytest.approx(0.8)
    assert trace["t_cap"][19] == pytest.approx(0.6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_record_does_not_sync_on_cuda():
    state = DynamicState(DynamicConfig(interval=1000)).cuda()
    iou, err = torch.tensor(0.6, device="cuda"), torch.tensor(0.3, device="cuda")
    state.record(iou, err)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            state.record(iou, err)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _distributed_worker(rank: int, world: int, init_file: str, out: dict) -> None:
    # a rendezvous file, not a port found free a moment earlier (another process may take it)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        state = DynamicState(DynamicConfig(interval=5))
        rng = random.Random(100 + rank)  # every rank sees different statistics
        for _ in range(20):
            state.record(torch.tensor(rng.uniform(0.4, 0.9)), torch.tensor(rng.uniform(0, 1)))
        out[rank] = (float(state.iou_thr), float(state.beta))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_with_identical_t_and_beta(tmp_path):
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2,
             join=True)
    assert out[0] == out[1]
    # And the gathered update equals Algorithm 1 over both ranks' last interval.
    seqs = []
    for rank in range(2):
        rng = random.Random(100 + rank)
        seqs.append([(rng.uniform(0.4, 0.9), rng.uniform(0, 1)) for _ in range(20)])
    last = seqs[0][15:] + seqs[1][15:]
    thr = max(float(np.mean([v[0] for v in last])), 0.4)
    beta = min(max(float(np.median([v[1] for v in last])), 1e-3), 1.0)
    assert out[0][0] == pytest.approx(thr, abs=1e-6)
    assert out[0][1] == pytest.approx(beta, abs=1e-6)


def test_state_dict_of_another_interval_loads_keeping_t_and_beta():
    """Weights of a run with another C load (strictly) into any DynamicState: T and beta
    are kept, the history of the other length is dropped with a warning."""
    src = DynamicState(DynamicConfig(interval=5))
    for i in range(7):
        src.record(torch.tensor(0.5 + 0.02 * i), torch.tensor(0.3))
    saved = src.state_dict()
    dst = DynamicState(DynamicConfig(interval=100))
    with pytest.warns(RuntimeWarning, match="history of length 5 does not fit interval 100"):
        dst.load_state_dict(saved)
    assert float(dst.iou_thr) == float(src.iou_thr) > 0.4
    assert float(dst.beta) == float(src.beta) < 1.0
    assert dst.iou_hist.shape == (100,) and torch.isnan(dst.iou_hist).all()
    assert torch.isnan(dst.err_hist).all() and dst.records == 0
    assert saved["iou_hist"].shape == (5,)  # the caller's state_dict is left as it was
    # the same length loads silently and exactly
    again = DynamicState(DynamicConfig(interval=5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.load_state_dict(saved)
    assert again.records == 7 and torch.equal(again.iou_hist, src.iou_hist)
