#!/usr/bin/env bash
# Checks the deployment files offline, with tools from PyPI in a throw-away venv:
#   1. deploy/kubernetes/*.yaml against the Kubernetes OpenAPI schemas (kubernetes-validate --strict:
#      unknown fields, wrong types and unknown kinds are errors);
#   2. yamllint (warnings are errors) on deploy/kubernetes, the chart's Chart.yaml and values.yaml
#      (helm templates are not YAML before rendering, and there is no helm here to render them);
#   3. the embedded files: every *.toml in a ConfigMap and deploy/containerd/hosts.toml parse; the
#      plain manifests agree with the chart's defaults (ports, image tag, config); every .Values path a
#      template reads exists in values.yaml; template blocks ({{ if }}...{{ end }}) balance;
#   4. when an ocicache binary is at hand ($OCICACHE_BIN, or the newer of target/release and
#      target/debug), the ConfigMap's ocicache.toml is started with it on 127.0.0.1 (ocicache
#      refuses unknown keys).
# Prints one summary line; exits non-zero on any problem.
#   bash deploy/validate.sh                      # Kubernetes 1.29.0
#   K8S_VERSIONS="1.29.0 1.33.0" bash deploy/validate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
k8s_versions=${K8S_VERSIONS:-1.29.0}

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

problems=()
problem() {
  echo "FAIL: $*" >&2
  problems+=("$1")
}

echo "== venv with kubernetes-validate and yamllint"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
pkgs=(kubernetes-validate yamllint)
"$py" -c 'import tomllib' 2>/dev/null || pkgs+=(tomli)
if ! "$work/venv/bin/pip" install -q --disable-pip-version-check "${pkgs[@]}" >"$work/pip.log" 2>&1; then
  cat "$work/pip.log" >&2
  echo "validate: FAILED: pip install ${pkgs[*]} (took $(( $(date +%s) - started ))s)"
  exit 1
fi

manifests=(deploy/kubernetes/*.yaml)

echo "== kubernetes-validate --strict (${k8s_versions}) ${manifests[*]}"
objects=0
for v in $k8s_versions; do
  out=$("$work/venv/bin/kubernetes-validate" --strict -k "$v" "${manifests[@]}" 2>&1) || true
  # An object without a schema (a typo in kind or apiVersion) is only a warning there: count it too.
  bad=$(grep -E '^(ERROR|WARN)' <<<"$out" || true)
  if [ -n "$bad" ]; then
    echo "$bad" >&2
    problem "kubernetes-validate $v" "$(grep -c . <<<"$bad") objects"
  fi
  passed=$(grep -c '^INFO .* passed' <<<"$out" || true)
  echo "   $passed objects valid against $v"
  objects=$passed
done
[ "$objects" -gt 0 ] || problem "kubernetes-validate" "no object validated"

echo "== yamllint --strict"
lint_targets=(deploy/kubernetes deploy/helm/ocicache/Chart.yaml deploy/helm/ocicache/values.yaml)
lint_config='{extends: default, rules: {line-length: {max: 160}, document-start: disable}}'
if ! "$work/venv/bin/yamllint" --strict -d "$lint_config" "${lint_targets[@]}" >&2; then
  problem "yamllint"
fi

echo "== embedded TOML, chart defaults vs plain manifests, template references"
toml_out="$work/ocicache.toml"
if ! "$py" -u - "$toml_out" "${manifests[@]}" <<'PY'; then
import re
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

out_path, manifest_paths = sys.argv[1], sys.argv[2:]
errors = []
chart = Path("deploy/helm/ocicache")
values = yaml.safe_load((chart / "values.yaml").read_text())
chart_meta = yaml.safe_load((chart / "Chart.yaml").read_text())
docs = [d for p in manifest_paths for d in yaml.safe_load_all(Path(p).read_text()) if d]

def find(kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    errors.append(f"plain manifests: no {kind} {name}")
    return None

# Every TOML file carried in a ConfigMap parses.
tomls = {}
for d in docs:
    if d["kind"] == "ConfigMap":
        for key, text in (d.get("data") or {}).items():
            if key.endswith(".toml"):
                try:
                    tomls[(d["metadata"]["name"], key)] = tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    errors.append(f"ConfigMap {d['metadata']['name']} {key}: {e}")

# The mirror URL every hosts.toml names is localhost:<the Service's nodePort>.
node_port = values["service"]["nodePort"]
mirror = f"http://localhost:{node_port}"
svc = find("Service", "ocicache")
if svc and svc["spec"]["ports"][0].get("nodePort") != node_port:
    errors.append(f"Service nodePort {svc['spec']['ports'][0].get('nodePort')} != values service.nodePort {node_port}")
hosts_files = {"deploy/containerd/hosts.toml": None}
try:
    hosts_files["deploy/containerd/hosts.toml"] = tomllib.loads(Path("deploy/containerd/hosts.toml").read_text())
except tomllib.TOMLDecodeError as e:
    errors.append(f"deploy/containerd/hosts.toml: {e}")
hosts_files["ConfigMap ocicache-hosts"] = tomls.get(("ocicache-hosts", "hosts.toml"))
for where, parsed in hosts_files.items():
    if parsed is None:
        errors.append(f"{where}: missing")
        continue
    hosts = parsed.get("host", {})
    if list(hosts) != [mirror] or sorted(hosts[mirror].get("capabilities", [])) != ["pull", "resolve"]:
        errors.append(f"{where}: expected one [host.\"{mirror}\"] with capabilities pull, resolve; got {hosts}")

# The plain ocicache.toml holds the chart's defaults, key by key.
cfg = tomls.get(("ocicache", "ocicache.toml"))
if cfg is None:
    errors.append("ConfigMap ocicache has no ocicache.toml")
else:
    Path(out_path).write_text(
        next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ocicache")["data"]["ocicache.toml"]
    )
    snake = lambda k: re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k)
    skip = {"upstreams", "extraToml", "immutableTags"}
    for key, want in values["config"].items():
        if key in skip:
            continue
        got = cfg.get(snake(key))
        if got != want:
            errors.append(f"ocicache.toml {snake(key)} = {got!r}, chart default config.{key} = {want!r}")
    if values["config"]["immutableTags"] and cfg.get("immutable_tags") != values["config"]["immutableTags"]:
        errors.append("ocicache.toml immutable_tags differs from the chart default")

# Workload details the chart renders from its defaults.
dep = find("Deployment", "ocicache")
if dep:
    c = dep["spec"]["template"]["spec"]["containers"][0]
    tag = c["image"].rsplit(":", 1)[-1]
    if tag != str(chart_meta["appVersion"]):
        errors.append(f"Deployment image tag {tag} != Chart appVersion {chart_meta['appVersion']}")
    if c["ports"][0]["containerPort"] != values["config"]["port"]:
        errors.append("Deployment containerPort != values config.port")
    if c["resources"] != values["resources"]:
        errors.append("Deployment resources differ from values resources")
    if c["securityContext"] != values["securityContext"]:
        errors.append("Deployment container securityContext differs from values securityContext")
    if dep["spec"]["template"]["spec"]["securityContext"] != values["podSecurityContext"]:
        errors.append("Deployment pod securityContext differs from values podSecurityContext")
    for probe in ("livenessProbe", "readinessProbe"):
        if c[probe] != values[probe]:
            errors.append(f"Deployment {probe} differs from values {probe}")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    if mounts.get("cache") != values["config"]["cacheDir"]:
        errors.append("Deployment cache mount != values config.cacheDir")
pvc = find("PersistentVolumeClaim", "ocicache")
if pvc and pvc["spec"]["resources"]["requests"]["storage"] != values["persistence"]["size"]:
    errors.append("PVC size != values persistence.size")

# Templates: every .Values path exists in values.yaml; block actions balance.
openers = re.compile(r"^(if|with|range|define|block)\b")
for tpl in sorted((chart / "templates").glob("*")):
    text = tpl.read_text()
    for path in sorted(set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text))):
        node = values
        for part in path.strip(".").split("."):
            if not isinstance(node, dict) or part not in node:
                errors.append(f"{tpl}: .Values{path} is not in values.yaml")
                break
            node = node[part]
    depth = 0
    for action in re.findall(r"\{\{-?\s*(.*?)\s*-?\}\}", text, re.S):
        if action.startswith("/*"):
            continue
        if openers.match(action):
            depth += 1
        elif re.match(r"^end\b", action):
            depth -= 1
            if depth < 0:
                errors.append(f"{tpl}: {{{{ end }}}} without an open block")
                depth = 0
    if depth:
        errors.append(f"{tpl}: {depth} block(s) not closed with {{{{ end }}}}")

for e in errors:
    print(f"  {e}", file=sys.stderr)
print(f"   {len(tomls)} embedded TOML files, {len(list((chart / 'templates').glob('*')))} templates checked")
sys.exit(1 if errors else 0)
PY
  problem "embedded files and chart consistency"
fi

bin=${OCICACHE_BIN:-}
if [ -z "$bin" ]; then
  # The newer of the two builds.
  for b in target/release/ocicache target/debug/ocicache; do
    if [ -x "$b" ] && { [ -z "$bin" ] || [ "$b" -nt "$bin" ]; }; then bin=$b; fi
  done
fi
if [ -n "$bin" ] && [ -s "$toml_out" ]; then
  echo "== $bin --config <ConfigMap ocicache.toml> on 127.0.0.1"
  "$bin" --config "$toml_out" --listen 127.0.0.1 --port 0 --cache-dir "$work/cache" >"$work/ocicache.log" 2>&1 &
  pid=$!
  served=""
  for _ in $(seq 50); do
    if grep -q "ocicache serving" "$work/ocicache.log"; then served=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
  if [ -z "$served" ]; then
    cat "$work/ocicache.log" >&2
    problem "ocicache refused the ConfigMap's ocicache.toml"
  fi
else
  echo "== no ocicache binary (set OCICACHE_BIN or cargo build): config not started"
fi

took=$(( $(date +%s) - started ))
if [ ${#problems[@]} -gt 0 ]; then
  list=$(printf '%s; ' "${problems[@]}")
  echo "validate: FAILED: ${#problems[@]} problem(s): ${list%; } (${took}s)"
  exit 1
fi
echo "validate: OK: ${objects} objects valid against Kubernetes ${k8s_versions// /, } (strict), yamllint clean, embedded TOML and chart defaults consistent${bin:+, config accepted by $bin} (${took}s)"
