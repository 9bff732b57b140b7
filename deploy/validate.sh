#!/usr/bin/env bash
# Checks the deployment files offline; deploy/validate.py says what is checked:
#   yamllint; the helm chart linted and rendered with several sets of values, object storage among
#   them (and refusing the ones it must refuse, such as s3.enabled without a bucket); every object
#   against the Kubernetes schemas (strict); the wiring of Secrets, probes, TLS, shutdown and S3;
#   deploy/kubernetes/*.yaml equal to their chart renderings; deploy/containerd/hosts.toml; and,
#   with an ocicache binary at hand, every rendered ocicache.toml checked by `ocicache check-config`
#   (unknown keys and bad values refused, every setting read as written), then started on 127.0.0.1
#   for what needs a running server (probes, client auth and TLS over HTTP(S); configs with object
#   storage as far as listing their bucket, at a local endpoint without buckets) plus
#   deploy/grafana/check.sh.
#
# Needs python3 (made for 3.11) with venv and pip access to PyPI. The tools are pinned below and
# installed once into a venv kept in ${XDG_CACHE_HOME:-~/.cache}/ocicache-validate (a fresh machine:
# 10-20 s, later runs: a few seconds). The chart is rendered by Helm's own engine from the
# helm-python-sdk wheel (Helm's Go SDK as a library), so no helm binary or cluster is needed.
#
#   bash deploy/validate.sh                          # schemas of Kubernetes 1.25 (the chart's oldest) and 1.33
#   K8S_VERSIONS="1.29.0 1.37.0" bash deploy/validate.sh
#   OCICACHE_BIN=target/release/ocicache bash deploy/validate.sh
#   VERBOSE=1 bash deploy/validate.sh                # say what runs
# Environment: OCICACHE_BIN (default: the newer of target/release and target/debug; none: the
# configs are not started, and the summary says so), REQUIRE_OCICACHE_BIN=1 (no binary is a
# failure), VALIDATE_CACHE (where the venv is kept; "none": a throw-away venv).
#
# Prints exactly one line on stdout, "validate: OK: ..." or "validate: FAILED: ..."; details of
# problems go to stderr. Exits 0 when everything passed, 1 on a problem, 2 when it could not run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
started=$(date +%s)
k8s_versions=${K8S_VERSIONS:-1.25.0 1.33.0}
verbose=${VERBOSE:-}

# Exact versions of everything installed (no resolver, same result on every machine). PyPI never
# replaces a published file, so a pinned version is always the same code.
pins=(
  kubernetes-validate==1.37.0 yamllint==1.38.0 helm-python-sdk==0.2.2
  PyYAML==6.0.3 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  rpds-py==2026.9.1 attrs==26.1.0 importlib_resources==7.1.0 typing_extensions==4.16.0
  pathspec==1.1.1 packaging==26.3
)

work=$(mktemp -d "${TMPDIR:-/tmp}/ocicache-validate.XXXXXX") || exit 2
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
trap 'echo "validate: FAILED: interrupted ($(( $(date +%s) - started ))s)"; exit 2' INT TERM

took() { echo "$(( $(date +%s) - started ))s"; }
say() { if [ -n "$verbose" ]; then echo "== $*" >&2; fi; }
give_up() {
  echo "validate: FAILED: $* ($(took))"
  exit 2
}

python=$(command -v python3) || give_up "python3 not found"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || give_up "python3 is older than 3.9"
# Without tomllib (Python < 3.11) the checks use tomli.
"$python" -c 'import tomllib' 2>/dev/null || pins+=(tomli==2.2.1)

# ---------------------------------------------------------------- the venv (cached by its pins)
key=$(printf '%s\n' "$("$python" -c 'import sys, platform; print(sys.version, platform.machine())')" "${pins[@]}" \
  | sha256sum | cut -c1-16)
cache=${VALIDATE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/ocicache-validate}
if [ "$cache" = none ] || ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  cache=$work
fi
venv=$cache/venv-$key
if [ ! -f "$venv/.complete" ]; then
  say "venv with ${pins[*]}"
  # A venv cannot be moved once made: make it in place, one run at a time, and mark it complete
  # only when every pin is installed (an interrupted install is started over).
  exec 9>"$cache/.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv" >"$work/venv.log" 2>&1 || { cat "$work/venv.log" >&2; give_up "python3 -m venv (is python3-venv installed?)"; }
    ok=""
    for attempt in 1 2 3; do
      if "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
        --only-binary=:all: --retries 3 --timeout 30 "${pins[@]}" >"$work/pip.log" 2>&1; then
        ok=1
        break
      fi
      say "pip install failed (attempt $attempt)"
      sleep $((attempt * 2))
    done
    if [ -z "$ok" ]; then
      # helm-python-sdk has wheels for x86_64 Linux, macOS and Windows only: on other Linux machines
      # go without it (the summary then says the chart was not rendered). Nowhere else.
      if [ "$(uname -s)" = Linux ] && [ "$(uname -m)" != x86_64 ] \
        && grep -q "helm-python-sdk" "$work/pip.log" && "$venv/bin/python" -m pip install --quiet \
        --disable-pip-version-check --no-input --no-deps --only-binary=:all: --retries 3 --timeout 30 \
        $(printf '%s\n' "${pins[@]}" | grep -v '^helm-python-sdk==') >"$work/pip2.log" 2>&1; then
        ok=1
      else
        cat "$work/pip.log" >&2
        rm -rf "$venv"
        give_up "pip install ${pins[*]}"
      fi
    fi
    touch "$venv/.complete"
  fi
  exec 9>&-
fi
py=$venv/bin/python

# ---------------------------------------------------------------- the binary
bin=${OCICACHE_BIN:-}
if [ -z "$bin" ]; then
  for b in target/release/ocicache target/debug/ocicache; do
    if [ -x "$b" ] && { [ -z "$bin" ] || [ "$b" -nt "$bin" ]; }; then bin=$b; fi
  done
fi
stale=""
if [ -n "$bin" ]; then
  [ -x "$bin" ] || give_up "OCICACHE_BIN=$bin is not an executable"
  # A binary older than the sources may not know keys the config uses (or still accept old ones).
  if [ -n "$(find src Cargo.toml -newer "$bin" -print -quit 2>/dev/null)" ]; then stale=1; fi
elif [ -n "${REQUIRE_OCICACHE_BIN:-}" ]; then
  give_up "no ocicache binary (cargo build, or set OCICACHE_BIN)"
fi

# ---------------------------------------------------------------- the checks
say "deploy/validate.py (Kubernetes ${k8s_versions})"
"$py" deploy/validate.py --work "$work" --k8s-versions "$k8s_versions" ${bin:+--binary "$bin"} ${verbose:+--verbose} \
  >"$work/summary.json"
rc=$?
summary=$(tail -n 1 "$work/summary.json")
# Its last line is a JSON summary; without one it crashed (a traceback is on stderr).
problems=$("$py" -c 'import json, sys; print(int(json.loads(sys.argv[1])["problems"]))' "$summary" 2>/dev/null) \
  || give_up "deploy/validate.py crashed (exit $rc)"
if [ "$rc" -ne 0 ] && [ "$problems" -eq 0 ]; then give_up "deploy/validate.py exited $rc"; fi

grafana=""
if [ -n "$bin" ]; then
  say "deploy/grafana/check.sh $bin"
  if bash deploy/grafana/check.sh "$bin" >"$work/grafana.log" 2>&1; then
    grafana=1
  else
    cat "$work/grafana.log" >&2
    echo "FAIL: deploy/grafana/check.sh $bin" >&2
    problems=$((problems + 1))
  fi
fi

# ---------------------------------------------------------------- one line
details=$("$py" - "$summary" "$bin" "$grafana" "$stale" <<'PY'
import json, sys
s, binary, grafana, stale = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
parts = [
    f"{s['objects']} object validations against Kubernetes {', '.join(s['versions'])} (strict)",
    f"{s['renderings']} chart renderings, {s['refusals']} refused as they must be",
]
if binary:
    parts.append(f"{s.get('configs_checked', 0)} ocicache.toml accepted by {binary} check-config"
                 + (" (older than src/)" if stale else ""))
    parts.append(f"{s['configs_started']} started for probes, auth and TLS")
    parts.append(f"{s.get('storage_configs', 0)} with S3 storage read up to the bucket check")
    if grafana:
        parts.append("dashboard metrics exported")
else:
    parts.append("no ocicache binary: configs NOT checked")
parts += s.get("notes", [])
print(", ".join(parts))
PY
) || details="(no summary)"

if [ "$problems" -gt 0 ]; then
  echo "validate: FAILED: ${problems} problem(s), see above; ${details} ($(took))"
  exit 1
fi
echo "validate: OK: ${details}, yamllint clean, plain manifests = their chart renderings ($(took))"
