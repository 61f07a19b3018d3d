"""Times population queries on a running Stratify server and the same queries
in DuckDB over the same CSV files. Called by scripts/bench-segments.sh.

Each rule is sent as POST /v1/segments/query {"rules", "limit": 100, "as_of"}
(first page and total count); DuckDB runs hand-written SQL returning the first
100 ids with the total count. Counts must agree: that checks the two compute
the same population. Prints the median of RUNS runs after WARMUP runs.
"""
import http.client
import json
import statistics
import sys
import time
import urllib.parse

import duckdb

RUNS, WARMUP = 15, 3
url, key, csv_dir, now = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
NOW = f"TIMESTAMPTZ '{now.replace('T', ' ').replace('Z', '+00')}'"

def window(days):
    return f"ts > {NOW} - INTERVAL {days} DAY AND ts <= {NOW}"

# (name, Stratify rule, DuckDB SQL selecting user_id)
RULES = [
    ("age 25-34 (DuckMart 1)", {"field": "age", "op": "between", "value": [25, 34]},
     "SELECT user_id FROM users WHERE age BETWEEN 25 AND 34"),
    ("California + LOGIN (DuckMart 2)",
     {"operator": "AND", "conditions": [{"field": "location", "op": "eq", "value": "California"},
                                        {"event": "LOGIN", "op": "gte", "value": 1}]},
     f"SELECT user_id FROM users WHERE location = 'California' AND user_id IN "
     f"(SELECT user_id FROM events WHERE event_name = 'LOGIN' AND ts <= {NOW})"),
    ("premium on mobile (attribute map)", {"subscription_plan": "premium", "device_type": "mobile"},
     "SELECT user_id FROM users WHERE subscription_plan = 'premium' AND device_type = 'mobile'"),
    ("state in [CA, TX, NY]", {"field": "location", "op": "in", "value": ["California", "Texas", "New York"]},
     "SELECT user_id FROM users WHERE location IN ('California', 'Texas', 'New York')"),
    ("name like 'Ol%'", {"field": "name", "op": "like", "value": "Ol%"},
     "SELECT user_id FROM users WHERE name LIKE 'Ol%'"),
    (">= 3 LOGIN in 30 days", {"event": "LOGIN", "within": "30d", "op": "gte", "value": 3},
     f"SELECT user_id FROM events WHERE event_name = 'LOGIN' AND {window(30)} GROUP BY user_id HAVING count(*) >= 3"),
    (">= 2 PURCHASE_MADE ever", {"event": "PURCHASE_MADE", "op": "gte", "value": 2},
     f"SELECT user_id FROM events WHERE event_name = 'PURCHASE_MADE' AND ts <= {NOW} GROUP BY user_id HAVING count(*) >= 2"),
    ("cart abandonment (7d cart, never bought)",
     {"operator": "AND", "conditions": [{"event": "ADDED_TO_CART", "within": "7d", "op": "gte", "value": 1},
                                        {"event": "PURCHASE_MADE", "op": "eq", "value": 0}]},
     f"SELECT user_id FROM events WHERE event_name = 'ADDED_TO_CART' AND {window(7)} "
     f"EXCEPT SELECT user_id FROM events WHERE event_name = 'PURCHASE_MADE' AND ts <= {NOW}"),
    ("nested: (age<30 or premium) and not tablet and SEARCH 7d",
     {"operator": "AND", "conditions": [
         {"operator": "OR", "conditions": [{"field": "age", "op": "lt", "value": 30},
                                           {"field": "subscription_plan", "op": "eq", "value": "premium"}]},
         {"not": {"field": "device_type", "op": "eq", "value": "tablet"}},
         {"event": "SEARCH", "within": "7d", "op": "gte", "value": 1}]},
     f"SELECT user_id FROM users WHERE (age < 30 OR subscription_plan = 'premium') AND NOT (device_type = 'tablet') "
     f"AND user_id IN (SELECT user_id FROM events WHERE event_name = 'SEARCH' AND {window(7)})"),
    ("ltv > 1000", {"field": "ltv", "op": "gt", "value": 1000},
     f"SELECT user_id FROM orders WHERE ts <= {NOW} GROUP BY user_id HAVING sum(amount) > 1000"),
    ("dormant: no order for 14 days", {"field": "seconds_since_last_order", "op": "gte", "value": 1209600},
     f"SELECT user_id FROM orders WHERE ts <= {NOW} GROUP BY user_id HAVING max(ts) <= {NOW} - INTERVAL 14 DAY"),
    (">= 2 orders in 23 days", {"field": "order_count_last_23_days", "op": "gte", "value": 2},
     f"SELECT user_id FROM orders WHERE {window(23)} GROUP BY user_id HAVING count(*) >= 2"),
    ("last order in Bengaluru and 2+ orders",
     {"operator": "AND", "conditions": [{"field": "city", "op": "eq", "value": "Bengaluru"},
                                        {"field": "total_orders", "op": "gte", "value": 2}]},
     f"SELECT user_id FROM orders WHERE ts <= {NOW} GROUP BY user_id "
     f"HAVING arg_max(city, ts) = 'Bengaluru' AND count(*) >= 2"),
]

def load_duckdb():
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(f"CREATE TABLE users AS SELECT * FROM read_csv('{csv_dir}/user_attributes.csv', header=true)")
    con.execute(f"CREATE TABLE events AS SELECT user_id, event_name, CAST(timestamp AS TIMESTAMPTZ) AS ts "
                f"FROM read_csv('{csv_dir}/user_events.csv', header=true, types={{'timestamp': 'VARCHAR'}})")
    con.execute(f"CREATE TABLE orders AS SELECT user_id, amount, city, CAST(timestamp AS TIMESTAMPTZ) AS ts "
                f"FROM read_csv('{csv_dir}/orders.csv', header=true, types={{'timestamp': 'VARCHAR'}})")
    print(f"DuckDB {duckdb.__version__}: loaded the CSVs in {time.perf_counter() - t:.1f}s (not timed below)")
    return con

def time_stratify(rule):
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port)
    body = json.dumps({"rules": rule, "limit": 100, "as_of": now})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    times, count = [], None
    for i in range(WARMUP + RUNS):
        t = time.perf_counter()
        conn.request("POST", "/v1/segments/query", body, headers)
        resp = conn.getresponse()
        data = json.loads(resp.read())
        elapsed = time.perf_counter() - t
        if resp.status != 200:
            raise SystemExit(f"{resp.status}: {data}")
        count = data["total_count"]
        if i >= WARMUP:
            times.append(elapsed)
    return statistics.median(times) * 1000, count

def time_duckdb(con, sql):
    q = f"SELECT user_id, count(*) OVER () AS total FROM ({sql}) LIMIT 100"
    times, count = [], None
    for i in range(WARMUP + RUNS):
        t = time.perf_counter()
        rows = con.execute(q).fetchall()
        elapsed = time.perf_counter() - t
        count = rows[0][1] if rows else 0
        if i >= WARMUP:
            times.append(elapsed)
    return statistics.median(times) * 1000, count

con = load_duckdb()
print(f"{'rule':<58} {'stratify ms':>11} {'duckdb ms':>10} {'ratio':>7} {'count':>8}")
ours, ratios, mismatches = [], [], []
for name, rule, sql in RULES:
    s_ms, s_count = time_stratify(rule)
    d_ms, d_count = time_duckdb(con, sql)
    ours.append(s_ms)
    ratios.append(d_ms / s_ms)
    flag = "" if s_count == d_count else f"  COUNT MISMATCH (duckdb {d_count})"
    if flag:
        mismatches.append(name)
    print(f"{name:<58} {s_ms:>11.2f} {d_ms:>10.2f} {d_ms / s_ms:>6.1f}x {s_count:>8}{flag}")
print(f"median over rules: stratify {statistics.median(ours):.2f} ms; "
      f"slowest rule {max(ours):.2f} ms; ratio min {min(ratios):.1f}x, median {statistics.median(ratios):.1f}x")
if mismatches:
    raise SystemExit(f"counts differ for: {', '.join(mismatches)}")
