#!/usr/bin/env bash
# Checks deploy/grafana/ocicache.json against what an ocicache binary really exports:
#   1. the file is valid JSON, panel ids are unique, every panel and query uses the ${datasource}
#      variable, and every $variable in a query is defined (or is a Grafana built-in);
#   2. every metric name in every query (panel `expr`s and the template variables' label_values /
#      query_result queries) is exported by the binary, and every function name is a PromQL one.
# The binary is started on a free 127.0.0.1 port with a throw-away cache directory, /metrics is
# scraped once, and the process is stopped. Nothing is built here.
# Metric families with no series yet (e.g. labelled counters before the first request) only show
# their `# TYPE` line; the sample names are derived from it the way Prometheus ingests them
# (counter -> NAME_total, histogram -> NAME_bucket/_sum/_count, ...).
#   bash deploy/grafana/check.sh target/debug/ocicache [dashboard.json]
# Exits non-zero on an unknown metric or function name, or a structural problem.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 <path to the ocicache binary> [dashboard.json]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
exec python3 - "$1" "${2:-$here/ocicache.json}" <<'PY'
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

binary, dashboard_path = os.path.abspath(sys.argv[1]), sys.argv[2]


# ---------------------------------------------------------------- scrape a live binary
def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCICACHE_")}
    last_log = ""
    for _attempt in range(5):
        cache_dir = tempfile.mkdtemp(prefix="ocicache-grafana-check.")
        log = tempfile.TemporaryFile()
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1", "-p", str(port), "-d", cache_dir, "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        return port, r.read().decode()
                except OSError:
                    time.sleep(0.1)
            log.seek(0)
            last_log = log.read().decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
            shutil.rmtree(cache_dir, ignore_errors=True)
    sys.exit(f"could not scrape /metrics from {binary} (5 attempts); last output:\n{last_log}")


port, exposition = scrape()

SUFFIXES = {
    "counter": ["_total"],
    "histogram": ["_bucket", "_sum", "_count"],
    "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
    "summary": ["", "_sum", "_count"],
    "info": ["_info"],
}
sampled, declared = set(), {}  # declared: sample name -> (family, type)
for line in exposition.splitlines():
    if line.startswith("# TYPE "):
        _, _, family, mtype = line.split(None, 3)
        if mtype == "counter" and family.endswith("_total"):  # Prometheus text format 0.0.4
            family = family[: -len("_total")]
        for suffix in SUFFIXES.get(mtype, [""]):
            declared[family + suffix] = (family, mtype)
    elif line and not line.startswith("#"):
        sampled.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
exported = sampled | set(declared)

# ---------------------------------------------------------------- the dashboard's queries
FUNCTIONS = set("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv
double_exponential_smoothing exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase irate label_join
label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort
sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh
time timestamp vector year start end
sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
""".split())
KEYWORDS = {"and", "or", "unless", "atan2", "bool", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "inf", "nan"}
BUILTIN_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                "__from", "__to", "__dashboard", "__name", "__org", "__user", "__all"}


def names_in(expr):
    """(metric names, function names) in a PromQL expression."""
    metrics = set(re.findall(r"""__name__\s*=~?\s*"([A-Za-z_:][A-Za-z0-9_:]*)\"""", expr))
    e = re.sub(r"#[^\n]*", " ", expr)
    e = re.sub(r'"(?:\\.|[^"\\])*"' r"|'(?:\\.|[^'\\])*'|`[^`]*`", ' "" ', e)
    e = re.sub(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]", " 0 ", e)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", e)
    e = re.sub(r"(?<![A-Za-z0-9_:.])(0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)", " ", e)
    functions = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        if re.match(r"\s*\(", e[m.end():]):
            functions.add(word)
        elif word.lower() not in KEYWORDS:
            metrics.add(word)
    return metrics, functions


def variable_expr(q):
    """The PromQL inside a Prometheus template variable query, or None."""
    q = q.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", q, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    return m.group(1) if m else None


problems = []
try:
    with open(dashboard_path) as f:
        dash = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"{dashboard_path}: {e}")

variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
queries = []  # (where, expr)
for v in dash.get("templating", {}).get("list", []):
    if v.get("type") != "query":
        continue
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    inner = variable_expr(q)
    if inner is None and q:
        problems.append(f"variable ${v.get('name')}: query not understood: {q}")
    elif inner:
        queries.append((f"variable ${v.get('name')}", inner))
    if (v.get("datasource") or {}).get("uid") != "${datasource}":
        problems.append(f"variable ${v.get('name')}: datasource is not ${{datasource}}")


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


ids, n_panels = set(), 0
for p in walk(dash.get("panels", [])):
    where = f"panel {p.get('id')} {p.get('title')!r}"
    if p.get("id") in ids:
        problems.append(f"{where}: duplicate id")
    ids.add(p.get("id"))
    if "gridPos" not in p:
        problems.append(f"{where}: no gridPos")
    if p.get("type") == "row":
        continue
    n_panels += 1
    if (p.get("datasource") or {}).get("uid") != "${datasource}":
        problems.append(f"{where}: datasource is not ${{datasource}}")
    if not p.get("targets"):
        problems.append(f"{where}: no queries")
    for t in p.get("targets", []):
        if (t.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"{where} query {t.get('refId')}: datasource is not ${{datasource}}")
        if not t.get("expr"):
            problems.append(f"{where} query {t.get('refId')}: no expr")
        else:
            queries.append((f"{where} query {t.get('refId')}", t["expr"]))

used = {}
for where, expr in queries:
    for var in re.findall(r"\$\{?(\w+)", expr):
        if var not in variables and var not in BUILTIN_VARS:
            problems.append(f"{where}: undefined variable ${var}")
    metrics, functions = names_in(expr)
    for fn in sorted(functions - FUNCTIONS):
        problems.append(f"{where}: unknown function {fn}()")
    for name in metrics:
        used.setdefault(name, []).append(where)

unknown = sorted(set(used) - exported)
for name in unknown:
    problems.append(f"unknown metric {name} (not in /metrics), used by: " + "; ".join(sorted(set(used[name]))))

print(f"scraped http://127.0.0.1:{port}/metrics from {binary}: {len(sampled)} sample names, "
      f"{len({f for f, _ in declared.values()})} families")
print(f"{dashboard_path}: {n_panels} panels, {len(queries)} queries, {len(used)} metric names")
for name in sorted(used):
    if name in sampled:
        how = "exported"
    elif name in declared:
        family, mtype = declared[name]
        how = f"exported (# TYPE {family} {mtype}, no series before traffic)"
    else:
        how = "UNKNOWN"
    print(f"  {name:<58} {how}  [{len(used[name])} queries]")
families_used = {declared[n][0] for n in used if n in declared}
unused = sorted({f for f, _ in declared.values()} - families_used)
if unused:
    print("exported but not on the dashboard: " + ", ".join(unused))
if problems:
    print(f"FAIL: {len(problems)} problem(s)")
    for p in problems:
        print(f"  - {p}")
    sys.exit(1)
print("OK: every metric name in the dashboard is exported by ocicache")
PY
