"""Trace generation and the file loaders, on small files written here."""

import numpy as np
import pytest

from fedge.caching.traces import csv_trace, movielens_trace, synthetic_trace, zipf_weights
from fedge.core.errors import FedgeError


def test_stationary_synthetic_requests_follow_zipf():
    rng = np.random.default_rng(0)
    trace = synthetic_trace(rng, requests=200_000, items=50, users=5, alpha=0.8)
    counts = np.sort(np.bincount(trace.item, minlength=50))[::-1] / 200_000
    np.testing.assert_allclose(counts[:5], zipf_weights(50, 0.8)[:5], rtol=0.05)
    assert np.all(np.diff(trace.time_s) > 0) and trace.features.shape == (50, 8)


def test_drift_and_new_items_change_popularity_over_time():
    rng = np.random.default_rng(1)
    trace = synthetic_trace(
        rng, requests=40_000, items=100, users=5, alpha=1.0, periods=4, drift=0.5, new_items=0.3
    )
    first = set(np.unique(trace.item[:10_000]))
    last = np.bincount(trace.item[30_000:], minlength=100)
    assert len(first) <= 70  # 30 items have not arrived yet
    newcomers = [i for i in range(100) if i not in first]
    assert last[newcomers].sum() > 0.1 * last.sum()


def test_movielens_loader_reads_ratings_and_genres(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "user,item,rating,timestamp\n1,10,4.0,300\n2,20,3.5,100\n1,20,5.0,200\n"
    )
    (tmp_path / "movies.csv").write_text(
        'item,title,genres\n10,"A, the film",Comedy|Drama\n20,B,Drama\n30,C,Horror\n'
    )
    trace = movielens_trace(tmp_path / "ratings.csv", tmp_path / "movies.csv", time_scale=0.5)
    assert trace.time_s.tolist() == [0.0, 50.0, 100.0]
    assert trace.user.tolist() == [1, 0, 0] and trace.item.tolist() == [1, 1, 0]
    # genres sorted: Comedy, Drama, Horror; item codes by first appearance: 10 -> 0, 20 -> 1
    assert trace.features.tolist() == [[1, 1, 0], [0, 1, 0]]


def test_csv_loader_with_and_without_features(tmp_path):
    (tmp_path / "req.csv").write_text("time_s,user,item\n5,a,x\n7,b,y\n6,a,y\n")
    bare = csv_trace(tmp_path / "req.csv")
    assert bare.time_s.tolist() == [0.0, 1.0, 2.0] and bare.item.tolist() == [0, 1, 1]
    assert bare.features.tolist() == [[1, 0], [0, 1]]
    (tmp_path / "items.csv").write_text("item,f1,f2\ny,0.5,2\nx,1,0\n")
    rich = csv_trace(tmp_path / "req.csv", tmp_path / "items.csv")
    assert rich.features.tolist() == [[1, 0], [0.5, 2]]


def test_a_bad_value_names_the_file_and_line(tmp_path):
    (tmp_path / "req.csv").write_text("time_s,user,item\n5,a,x\nsoon,b,y\n")
    with pytest.raises(FedgeError, match=r"req\.csv:3: time_s 'soon' is not a number"):
        csv_trace(tmp_path / "req.csv")
    with pytest.raises(FedgeError, match=r"missing\.csv: cannot read"):
        csv_trace(tmp_path / "missing.csv")
