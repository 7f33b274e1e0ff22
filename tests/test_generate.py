"""The synthetic book generator: determinism, the shape DESIGN section 5 asks for, a clean
validation, and the same book through a real S3-compatible server (multipart included)."""
import datetime as dt
import hashlib

import numpy as np
import pyarrow.compute as pc
import pytest

from rebalancer.book import Book
from rebalancer.generate import GeneratorSettings, generate_book, generate_bucket
from rebalancer.storage import open_uri
from rebalancer.validate import validate_book

SMALL = GeneratorSettings(accounts=1500, seed=11, accounts_per_bucket=500)


def _digests(uri: str) -> dict[str, str]:
    loc = open_uri(uri)
    import pyarrow.fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    return {i.path[len(loc.path):]: hashlib.sha256(loc.fs.open_input_stream(i.path).read()).hexdigest()
            for i in infos if i.type == pafs.FileType.File}


@pytest.fixture(scope="module")
def small_book(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("book") / "b")
    generate_book(SMALL, uri, workers=1)
    return uri


def test_same_seed_same_bytes_whatever_the_worker_count(small_book, tmp_path):
    other = str(tmp_path / "b2")
    generate_book(SMALL, other, workers=2)
    a, b = _digests(small_book), _digests(other)
    assert len(a) == 4 * 3 + 8 + 1 and a == b


def test_another_seed_gives_another_book():
    t1, _ = generate_bucket(SMALL, 0)
    t2, _ = generate_bucket(GeneratorSettings(accounts=1500, seed=12, accounts_per_bucket=500), 0)
    assert not t1["lots"].equals(t2["lots"])


def test_generated_book_validates_clean(small_book):
    report = validate_book(small_book)
    assert report.ok, report.format()
    assert not report.problems, report.format()


def test_book_has_the_standard_shape(small_book):
    book = Book.open(small_book)
    info = book.info
    assert info.total("accounts") == 1500 and info.n_buckets == 3
    acc = [book.read("accounts", b) for b in range(3)]
    lots = [book.read("lots", b) for b in range(3)]
    hh = [book.read("households", b) for b in range(3)]
    trades = [book.read("recent_trades", b) for b in range(3)]
    types = np.concatenate([a["account_type"].to_numpy(zero_copy_only=False) for a in acc])
    share = {t: np.mean(types == t) for t in ("taxable", "traditional", "roth")}
    assert abs(share["taxable"] - 0.60) < 0.05 and abs(share["traditional"] - 0.25) < 0.05
    sizes = np.concatenate([np.bincount(pc.dictionary_encode(a["household_id"]).combine_chunks().indices.to_numpy()) for a in acc])
    assert sizes.min() >= 1 and sizes.max() <= 4 and 2.0 < sizes.mean() < 2.7
    # Direct-indexed accounts hold 200-500 stocks; their share of taxable accounts is ~20%.
    di = np.concatenate([a["direct_index_etf"].is_valid().to_numpy(zero_copy_only=False) for a in acc])
    assert 0.12 < di.sum() / (types == "taxable").sum() < 0.28
    a0, l0 = acc[0], lots[0]
    di_ids = a0["account_id"].to_numpy()[a0["direct_index_etf"].is_valid().to_numpy(zero_copy_only=False)]
    sec_per_acc = {int(x): len(np.unique(l0["security_id"].to_numpy()[l0["account_id"].to_numpy() == x])) for x in di_ids[:5]}
    assert all(150 <= n <= 520 for n in sec_per_acc.values()), sec_per_acc
    # Lots span ~10 years and are never dated on or after the as-of day.
    acq = np.concatenate([l["acquired"].to_numpy() for l in lots])
    assert acq.max() < np.datetime64(info.as_of) and acq.min() <= np.datetime64(info.as_of) - np.timedelta64(3000, "D")
    # Both gains and losses are embedded (real price history).
    prices = book.read("securities")["price"].to_numpy()
    gain = prices[lots[0]["security_id"].to_numpy()] - lots[0]["cost_basis"].to_numpy()
    assert (gain > 0).mean() > 0.5 and (gain < 0).sum() > 100
    # Wash-sale windows are live: recent loss sales and recent buys.
    rt = pa_concat(trades)
    sells = rt.filter(pc.equal(rt["side"], "sell"))
    assert sells.num_rows > 0 and pc.all(pc.less(sells["realized_gain"], 0)).as_py()
    assert rt.num_rows > sells.num_rows
    # ~5% of accounts have their own minimum new position ($100 or $250), ~5% their own cash
    # band ($250 or $1,000); the rest are null (the firm's defaults).
    for col, values in (("min_position", {100.0, 250.0}), ("cash_band", {250.0, 1000.0})):
        v = pa_concat([a.select([col]) for a in acc])[col]
        assert 0.02 < (len(v) - v.null_count) / len(v) < 0.09, col
        assert set(v.drop_null().to_pylist()) == values, col
    # Tax settings vary by household; ~60% have a budget.
    h = pa_concat(hh)
    assert len(np.unique(h["short_term_rate"].to_numpy())) >= 4
    assert 0.45 < h["tax_budget"].is_valid().to_numpy(zero_copy_only=False).mean() < 0.75
    # Counts in book.json are the files' counts.
    for b in range(3):
        s = info.buckets[b]
        assert (s.accounts, s.lots, s.households, s.recent_trades) == (
            acc[b].num_rows, lots[b].num_rows, hh[b].num_rows, trades[b].num_rows)


def pa_concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


def test_earlier_as_of_date_uses_that_days_prices(tmp_path):
    s = GeneratorSettings(accounts=200, seed=1, as_of=dt.date(2020, 2, 19))
    tables, stats = generate_bucket(s, 0)
    assert tables["lots"]["acquired"].to_numpy().max() < np.datetime64("2020-02-19")
    assert stats.accounts == 200


def test_book_through_s3_equals_local_including_multipart(s3_bucket, tmp_path):
    # One bucket of 8,000 accounts makes a lots file of ~13 MB: over the multipart threshold.
    s = GeneratorSettings(accounts=8000, seed=5, accounts_per_bucket=8000)
    local = str(tmp_path / "local")
    generate_book(s, local, workers=1)
    uri = s3_bucket.uri("books/std")
    generate_book(s, uri, workers=1)

    local_digests = _digests(local)
    objs = {o["Key"]: o for o in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="books/std/")["Contents"]}
    assert {k[len("books/std"):] for k in objs} == set(local_digests)
    for rel, digest in local_digests.items():
        body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="books/std" + rel)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, rel
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="books/std/lots/bucket-00000.parquet")
    assert head["ContentLength"] > 10 * 2**20 and "-" in head["ETag"], head["ETag"]  # multipart

    book = Book.open(uri)
    assert book.info == Book.open(local).info
    assert book.read("lots", 0).equals(Book.open(local).read("lots", 0))
    assert validate_book(uri).ok


def test_generate_refuses_to_overwrite(small_book):
    from rebalancer.errors import BookLayoutError

    with pytest.raises(BookLayoutError, match="already holds a book"):
        generate_book(SMALL, small_book)


def test_ids_are_unique_even_for_new_direct_indexed_accounts():
    # Large buckets contain accounts opened in the last month: all their lots are recent buys,
    # more than a thousand for a direct-indexed account.
    tables, _ = generate_bucket(GeneratorSettings(accounts=20000, seed=3, accounts_per_bucket=5000), 3)
    for name, key in (("lots", "lot_id"), ("recent_trades", "trade_id"), ("accounts", "account_id")):
        ids = tables[name][key].to_numpy()
        assert len(np.unique(ids)) == len(ids), name
    per_account = np.bincount(np.unique(tables["recent_trades"]["account_id"].to_numpy(), return_inverse=True)[1])
    assert per_account.max() > 1000
