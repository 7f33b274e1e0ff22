"""The data contract: schemas round-trip through Parquet, conform() casts only safely, and the
documentation is the code's."""
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rebalancer.book import BookInfo, BucketStats, table_path
from rebalancer.schema import HOUSEHOLD_TABLES, TABLES, bucket_of, conform, contract_markdown, table_spec
from rebalancer.storage import open_uri

ROOT = Path(__file__).resolve().parents[1]


def _sample(spec) -> pa.Table:
    """Two rows of plausible values for every column of a table."""
    cols = {}
    for f in spec.schema:
        t = f.type
        if pa.types.is_list(t):
            v = [["a"], []] if pa.types.is_string(t.value_type) else [[1, 2], []]
        elif pa.types.is_string(t):
            v = ["x", "y"]
        elif pa.types.is_boolean(t):
            v = [True, False]
        elif pa.types.is_date(t):
            v = [dt.date(2021, 4, 20), dt.date(2020, 1, 2)]
        elif pa.types.is_floating(t):
            v = [1.5, 2.25]
        else:
            v = [1, 2]
        cols[f.name] = pa.array(v, t)
    return pa.table(cols, schema=spec.schema)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_schema_round_trip(tmp_path, name):
    spec = table_spec(name)
    loc = open_uri(str(tmp_path))
    rel = table_path(spec, 3 if spec.household_keyed else None)
    t = _sample(spec)
    loc.write_parquet(rel, t)
    back = loc.read_parquet(rel)
    assert back.schema.equals(spec.schema, check_metadata=False)
    assert back.equals(t)
    # The files carry the column documentation.
    assert back.schema.field(spec.schema.names[0]).metadata[b"doc"]


def test_household_tables_are_bucketed_and_paths_follow_the_layout():
    for spec in HOUSEHOLD_TABLES:
        assert "bucket" in spec.schema.names and "household_id" in spec.schema.names
        assert table_path(spec, 42) == f"{spec.name}/bucket-00042.parquet"
    assert table_path(TABLES["securities"]) == "securities/part-0.parquet"
    with pytest.raises(ValueError):
        table_path(TABLES["lots"])
    assert bucket_of(np.array([0, 5, 17]), 4).tolist() == [0, 1, 1]


def test_conform_orders_and_casts_safely():
    spec = TABLES["risk_specific"]
    t = pa.table({"specific_variance": [0.04], "security_id": pa.array([7], pa.int64()), "extra": [1]})
    out = conform(t, spec)
    assert out.schema.names == ["security_id", "specific_variance"]
    assert out.schema.field("security_id").type == pa.int32()
    with pytest.raises(ValueError, match="risk_specific.security_id"):
        conform(pa.table({"security_id": pa.array([2**40], pa.int64()), "specific_variance": [0.1]}), spec)
    with pytest.raises(ValueError, match="missing columns"):
        conform(pa.table({"security_id": [1]}), spec)


def test_unknown_table_is_named():
    with pytest.raises(KeyError, match="positions"):
        table_spec("positions")


def test_docs_are_generated_from_the_schema():
    assert (ROOT / "docs" / "data-contract.md").read_text() == contract_markdown() + "\n", \
        "docs/data-contract.md is stale: run `rebalance schema --markdown > docs/data-contract.md`"


def test_book_info_round_trip_and_checks():
    info = BookInfo(as_of=np.datetime64("2021-04-21").astype(object), n_buckets=2,
                    buckets=(BucketStats(0, 1, 2, 3, 0, 2, 10.0), BucketStats(1, 1, 1, 1, 1, 1, 5.0)),
                    source={"seed": 1})
    assert BookInfo.from_json(info.to_json()) == info
    assert info.to_json()["totals"]["accounts"] == 3
    with pytest.raises(ValueError):
        BookInfo(as_of=info.as_of, n_buckets=3, buckets=info.buckets)


def test_conform_refuses_to_parse_text_into_numbers():
    with pytest.raises(ValueError, match="risk_specific.security_id"):
        conform(pa.table({"security_id": ["17"], "specific_variance": [0.1]}), TABLES["risk_specific"])


def test_a_book_written_before_the_optional_columns_still_conforms():
    """accounts.min_position and cash_band came after books were written without them: a
    missing one reads as null (the firm default). Any other missing column is still an error,
    nullable or not (a missing tax_budget must not silently mean "no cap")."""
    spec = TABLES["accounts"]
    assert spec.optional == ("min_position", "cash_band")
    old = _sample(spec).drop_columns(["min_position", "cash_band"])
    out = conform(old, spec)
    assert out.schema.equals(spec.schema, check_metadata=False)
    assert out["min_position"].null_count == 2 and out["cash_band"].null_count == 2
    assert out.drop_columns(["min_position", "cash_band"]).equals(old)
    with pytest.raises(ValueError, match=r"missing columns \['direct_index_etf'\]"):
        conform(old.drop_columns(["direct_index_etf"]), spec)
    with pytest.raises(ValueError, match=r"missing columns \['tax_budget'\]"):
        conform(_sample(TABLES["households"]).drop_columns(["tax_budget"]), TABLES["households"])


def test_an_optional_column_must_be_nullable():
    from rebalancer.schema import TableSpec

    with pytest.raises(ValueError, match="t.x"):
        TableSpec("t", pa.schema([pa.field("x", pa.float64(), nullable=False)]), ("x",), False, "", optional=("x",))
