"""Population model, per-key baseline, scoring direction and prompt field derivation."""

from __future__ import annotations

import math

import pytest

from models.features import FEATURES
from models.keymodel import KeyBaseline, KeyState
from models.policy import scrape_score
from models.population import PopulationModel
from models.prompt import derive_prompt_fields

NAN = float("nan")


def test_hst_structure_is_rebuilt_from_seed_and_masses():
    a = PopulationModel(n_trees=5, height=5, window_size=32, seed=3)
    for i in range(200):
        a.score_then_learn([(i * 7 % 13) / 13.0] * len(FEATURES), 0.1, learn=True)
    b = PopulationModel(n_trees=5, height=5, window_size=32, seed=3)
    b.import_state(a.export_state())
    probe = [0.9, NAN] + [0.2] * (len(FEATURES) - 2)
    assert a.score_then_learn(probe, 0.0, learn=False) == b.score_then_learn(probe, 0.0, learn=False)


def test_population_state_from_other_settings_is_refused():
    a = PopulationModel(seed=1)
    a.score_then_learn([0.1] * len(FEATURES), 0.1, learn=True)
    with pytest.raises(ValueError, match="different HalfSpaceTrees settings"):
        PopulationModel(seed=2).import_state(a.export_state())


def test_outlier_score_waits_for_the_warm_windows():
    # The first window is learned from a run's youngest keys: an outlier score against it alone
    # is not trusted. Nothing counts before `warm_windows` windows have completed.
    usual, odd = [0.1] * len(FEATURES), [0.95] * len(FEATURES)
    one = PopulationModel(n_trees=4, height=4, window_size=20, seed=7, warm_windows=1)
    two = PopulationModel(n_trees=4, height=4, window_size=20, seed=7, warm_windows=2)
    for p in (one, two):
        for _ in range(39):
            p.score_then_learn(usual, 0.05, learn=True)
    assert one.score_then_learn(odd, 0.9, learn=False) > 0.5
    assert two.score_then_learn(odd, 0.9, learn=False) == 0.0
    two.score_then_learn(usual, 0.05, learn=True)  # the second window completes
    assert two.score_then_learn(odd, 0.9, learn=False) > 0.5
    with pytest.raises(ValueError, match="warm_windows"):
        PopulationModel(warm_windows=0)


def test_flagged_keys_do_not_move_the_population():
    p = PopulationModel()
    before = p.export_state()
    p.score_then_learn([1.0] * len(FEATURES), 0.9, learn=False)
    assert p.export_state() == before


def test_adaptive_threshold_quantile_tracks_scores():
    p = PopulationModel(fading=0.01)
    for i in range(1000):
        p.observe_score((i % 100) / 100.0 * 0.3)
    assert 0.25 <= p.quantile(0.99) <= 0.32


def test_page_hinkley_flyweight_matches_a_private_river_detector():
    from river import drift

    xs = [0.1] * 30 + [0.6] * 30
    own = drift.PageHinkley(min_instances=6, delta=0.01, threshold=0.5, alpha=1.0, mode="up")
    hits_river = []
    for x in xs:
        own.update(x)
        hits_river.append(own.drift_detected)
    b = KeyBaseline(delta=0.01, threshold=0.5, min_instances=6)
    ks = KeyState()
    hits_fly = [b.update(ks, x) for x in xs]
    first = hits_river.index(True)
    assert hits_fly.index(True) == first


def test_page_hinkley_is_upward_only():
    b = KeyBaseline(delta=0.01, threshold=0.5, min_instances=6)
    ks = KeyState()
    assert not any(b.update(ks, x) for x in [0.8] * 30 + [0.05] * 60)


def test_score_direction_each_feature_up_never_lowers_the_score():
    base = [0.3] * len(FEATURES)
    s0, _ = scrape_score(base, (0.5, 0.35, 0.15))
    for i, name in enumerate(FEATURES):
        up = list(base)
        up[i] = 0.9
        s1, _ = scrape_score(up, (0.5, 0.35, 0.15))
        assert s1 >= s0 - 1e-12, f"{name} up lowered the score"


def test_unknown_content_is_neither_accusing_nor_acquitting():
    strong = [0.9] * len(FEATURES)
    s_full, _ = scrape_score(strong, (0.5, 0.35, 0.15))
    partial = list(strong)
    partial[1] = partial[2] = partial[3] = NAN  # no topic classifier on this gateway
    s_part, contrib = scrape_score(partial, (0.5, 0.35, 0.15))
    assert 0.5 * s_full < s_part < s_full
    assert all(math.isfinite(c) for c in contrib)
    assert abs(sum(contrib) - 1.0) < 1e-9


def test_derive_prompt_fields_is_stable_and_valid():
    f1 = derive_prompt_fields("Prove step by step that the sum of two even numbers is even.")
    f2 = derive_prompt_fields("Prove step by step that the sum of two even numbers is even.")
    assert f1 == f2
    assert f1["topic"] == "math" and f1["cot_request"] is True
    assert len(f1["prompt_simhash"]) == 16 and int(f1["prompt_simhash"], 16) >= 0
    assert derive_prompt_fields("hello there, how are you?")["topic"] == "chat"
    big = derive_prompt_fields("x" * 1_000_000)
    assert big["topic"] == "other"
