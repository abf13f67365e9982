"""What a user of ClickHouse's official Python client does, against a tandem cluster.

Run by the integration test `clients::clickhouse_connect_works_unchanged` with the nodes in
TANDEM_NODES (host:port,host:port) and a user in TANDEM_USER / TANDEM_PASSWORD. Every answer is
compared with values computed here from the rows this script generated, never with what tandem
answered elsewhere. Prints one JSON line with what it checked; exits non-zero on the first
mismatch.
"""

import datetime as dt
import json
import math
import os
import sys
import time

import clickhouse_connect
import numpy as np
import pandas as pd
import pyarrow as pa
from clickhouse_connect.driver.exceptions import DatabaseError

started = time.monotonic()
checks = []


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name}: {detail}", file=sys.stderr)
        sys.exit(1)
    checks.append(name)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


nodes = os.environ["TANDEM_NODES"].split(",")
user, password = os.environ["TANDEM_USER"], os.environ["TANDEM_PASSWORD"]


def connect(node, **options):
    host, port = node.rsplit(":", 1)
    return clickhouse_connect.get_client(host=host, port=int(port), username=user, password=password, **options)


# Connecting asks `SELECT version(), timezone()` and reads system.settings.
first, second = connect(nodes[0]), connect(nodes[1])
check("connects", first.server_version.startswith("24."), first.server_version)
check("server time zone is UTC", str(first.server_tz) == "UTC", str(first.server_tz))
# The client's default compression: lz4 both ways, since system.settings says it may.
check("negotiates lz4", first.compression.startswith("lz4") and first.write_compression == "lz4",
      f"{first.compression} / {first.write_compression}")
check("ping", first.ping())

first.command(
    "CREATE TABLE events (ts DateTime, host String, id UInt64, v Float64, tag Nullable(String), "
    "ts64 DateTime64(3), n Nullable(Int64)) ORDER BY (host, ts)"
)
check("DDL through command", "events" in str(first.command("SHOW TABLES")))

# Rows from Python lists: 20,000 of them, each value distinct where a query ranks by it.
ROWS = 20_000
base = dt.datetime(2024, 1, 1, 0, 0, 0)
rows = []
for i in range(ROWS):
    rows.append([
        base + dt.timedelta(seconds=37 * i),
        f"host-{i % 7}",
        i,
        (i * 7919 % 20011) / 10,
        None if i % 5 == 0 else f"t{i % 3}",
        base + dt.timedelta(milliseconds=1234 * i),
        None if i % 4 == 0 else i - 10_000,
    ])
columns = ["ts", "host", "id", "v", "tag", "ts64", "n"]
summary = first.insert("events", rows, column_names=columns, settings={"insert_quorum": 2})
check("insert of Python rows", summary.written_rows == ROWS, str(summary.summary))

# The other node answers: the quorum insert is already there.
count = second.command("SELECT count() FROM events")
check("rows replicated", count == ROWS, str(count))

frame = pd.DataFrame(rows, columns=columns)
frame["ts"] = pd.to_datetime(frame["ts"])
frame["ts64"] = pd.to_datetime(frame["ts64"])

# query_df: DateTime as datetime64, Nullable as nullable.
back = second.query_df("SELECT * FROM events ORDER BY id")
check("query_df rows", len(back) == ROWS, str(len(back)))
check("DateTime is datetime64", str(back["ts"].dtype).startswith("datetime64"), str(back["ts"].dtype))
check("DateTime64(3) is datetime64", str(back["ts64"].dtype).startswith("datetime64"), str(back["ts64"].dtype))
check("Nullable(Int64) is nullable", str(back["n"].dtype) == "Int64", str(back["n"].dtype))
check("timestamps exact", (back["ts"].astype("datetime64[s]").values == frame["ts"].astype("datetime64[s]").values).all())
check("DateTime64 exact", (back["ts64"].astype("datetime64[ms]").values == frame["ts64"].astype("datetime64[ms]").values).all())
check("strings exact", back["host"].tolist() == frame["host"].tolist())
check("NULLs kept", back["tag"].isna().sum() == frame["tag"].isna().sum() and back["n"].isna().sum() == frame["n"].isna().sum())
check("floats exact", back["v"].tolist() == frame["v"].tolist())

# insert_df of 100,000 rows round-trips exactly.
BIG = 100_000
big = pd.DataFrame({
    "id": np.arange(BIG, dtype=np.uint64),
    "at": pd.to_datetime(1_700_000_000 + np.arange(BIG) * 3, unit="s"),
    "name": [f"name-{i % 1000}" for i in range(BIG)],
    "score": pd.array([None if i % 10 == 0 else i * 2 for i in range(BIG)], dtype="Int64"),
    "ratio": np.arange(BIG) / 7.0,
})
first.command("CREATE TABLE frames (id UInt64, at DateTime, name String, score Nullable(Int64), ratio Float64) ORDER BY id")
first.insert_df("frames", big, settings={"insert_quorum": 2})
again = second.query_df("SELECT * FROM frames ORDER BY id")
check("insert_df row count", len(again) == BIG, str(len(again)))
check("insert_df ids", (again["id"].to_numpy(dtype=np.uint64) == big["id"].to_numpy()).all())
check("insert_df times", (again["at"].astype("datetime64[s]").values == big["at"].astype("datetime64[s]").values).all())
check("insert_df strings", again["name"].tolist() == big["name"].tolist())
check("insert_df nullable", again["score"].equals(big["score"]), f"{again['score'].head()} vs {big['score'].head()}")
check("insert_df floats", (again["ratio"].to_numpy() == big["ratio"].to_numpy()).all())

# query_arrow.
table = second.query_arrow("SELECT host, count() AS c FROM events GROUP BY host ORDER BY host")
check("query_arrow is a pyarrow table", isinstance(table, pa.Table), type(table).__name__)
expected = frame.groupby("host").size()
check("query_arrow values", table.column("c").to_pylist() == expected.tolist()
      and [str(h) for h in table.column("host").to_pylist()] == expected.index.tolist(), str(table))

# Server-side parameters {name:Type}.
since = base + dt.timedelta(hours=24)
result = second.query(
    "SELECT count() FROM events WHERE host = {h:String} AND ts >= {t:DateTime} AND id < {n:UInt64}",
    parameters={"h": "host-3", "t": since, "n": 15_000},
)
expected = int(((frame["host"] == "host-3") & (frame["ts"] >= since) & (frame["id"] < 15_000)).sum())
check("server-side parameters", result.result_rows[0][0] == expected, f"{result.result_rows} vs {expected}")

# Dashboard queries, each answer worked out with pandas.
hourly = second.query_df(
    "SELECT toStartOfHour(ts) AS hour, count() AS c, avg(v) AS a FROM events GROUP BY hour ORDER BY hour"
)
grouped = frame.groupby(frame["ts"].dt.floor("h"))["v"]
check("toStartOfHour buckets", hourly["c"].tolist() == grouped.size().tolist())
check("toStartOfHour averages", all(close(a, b) for a, b in zip(hourly["a"], grouped.mean())))
check("toStartOfHour keys", (hourly["hour"].astype("datetime64[s]").values == grouped.size().index.astype("datetime64[s]").values).all())

quarter = second.query_df(
    "SELECT toStartOfInterval(ts, INTERVAL 15 MINUTE) AS q, max(v) AS m FROM events GROUP BY q ORDER BY q"
)
expected = frame.groupby(frame["ts"].dt.floor("15min"))["v"].max()
check("toStartOfInterval", quarter["m"].tolist() == expected.tolist())

quantiles = second.query(
    "SELECT host, quantile(0.9)(v), median(v), quantiles(0.25, 0.75)(v) FROM events GROUP BY host ORDER BY host"
).result_rows
for host, p90, p50, (p25, p75) in quantiles:
    values = frame.loc[frame["host"] == host, "v"].to_numpy()
    ok = close(p90, np.quantile(values, 0.9)) and close(p50, np.median(values)) \
        and close(p25, np.quantile(values, 0.25)) and close(p75, np.quantile(values, 0.75))
    check(f"quantiles of {host}", ok, f"{p90, p50, p25, p75}")

conditional = second.query(
    "SELECT host, countIf(v > 1000), sumIf(v, tag IS NULL), uniqExact(tag) FROM events GROUP BY host ORDER BY host"
).result_rows
for host, high, nulls_sum, tags in conditional:
    part = frame[frame["host"] == host]
    check(f"countIf of {host}", high == int((part["v"] > 1000).sum()))
    check(f"sumIf of {host}", close(nulls_sum, part.loc[part["tag"].isna(), "v"].sum()))
    check(f"uniqExact of {host}", tags == part["tag"].nunique())

top = second.query(
    "SELECT host, argMax(id, v) AS best, max(v) AS top FROM events GROUP BY host ORDER BY top DESC LIMIT 3"
).result_rows
expected = frame.loc[frame.groupby("host")["v"].idxmax(), ["host", "id", "v"]].sort_values("v", ascending=False).head(3)
check("top-N by argMax", [(h, b, t) for h, b, t in top] == [tuple(r) for r in expected.itertuples(index=False)],
      f"{top} vs {expected}")

# Errors carry ClickHouse's code.
try:
    second.query("SELECT * FROM no_such_table")
    check("unknown table is an error", False)
except DatabaseError as error:
    check("unknown table code", "60" in str(error) and "UNKNOWN_TABLE" in str(error), str(error))

# A wrong password is refused.
try:
    host, port = nodes[0].rsplit(":", 1)
    clickhouse_connect.get_client(host=host, port=int(port), username=user, password="wrong")
    check("wrong password refused", False)
except DatabaseError as error:
    check("wrong password refused", "516" in str(error) or "AUTHENTICATION" in str(error), str(error))

print(json.dumps({"checks": len(checks), "seconds": round(time.monotonic() - started, 2)}))
