"""The checks behind deploy/validate.sh, run in its venv (kubernetes-validate, yamllint,
helm-python-sdk). Run it through validate.sh, which makes that venv.

  1. yamllint (warnings are errors) on the plain manifests, Chart.yaml and values.yaml, and on what
     the chart renders;
  2. the helm chart is linted and rendered offline (Helm's own Go template engine, no cluster) with
     several sets of values (object storage among them); combinations the chart must refuse are
     checked to fail with their message (s3 without a bucket, a missing Secret, a grace period
     shorter than the shutdown, ...);
  3. every rendered object and every object of deploy/kubernetes/*.yaml is validated against the
     Kubernetes OpenAPI schemas (strict: unknown fields, wrong types, unknown kinds are errors);
     Prometheus Operator objects, which have no schema there, get a structural check;
  4. the wiring inside each rendering: every file ocicache.toml names lies on a mount of the cache
     container whose Secret or ConfigMap item has that name, every mount has its volume, the cache
     volume is mounted at cache_dir, probes use HTTPS exactly when TLS is on, the grace period is
     longer than shutdown_delay + shutdown_timeout, hosts.toml names the right mirror URL; with
     object storage: storage = "s3://...", the cache volume an emptyDir, no claim, a rolling update,
     the AWS_* variables of the values; replicas with a preferred anti-affinity by hostname and a
     PodDisruptionBudget; peers with --advertise-url from the downward API's POD_IP and the shared
     secret mounted from a Secret as peer_secret_file (configs with peer settings go through
     check-config only with an ocicache that knows them: PEER_KEYS);
  5. each file of deploy/kubernetes/ is the chart's rendering with the values of its scenario
     (ocicache.yaml: the defaults plus the node configurator; ocicache-s3.yaml: a bucket and three
     replicas), object by object (ConfigMap TOML compared parsed), the commented optional settings
     use the chart's file paths, and deploy/containerd/hosts.toml is the host table the chart writes;
  6. with an ocicache binary, every rendered ocicache.toml and the plain ones (the Secret files
     replaced by generated fixtures) are checked by `ocicache check-config`, which refuses unknown
     keys and bad values as a start would: it must accept each, print every key with the value the
     file gives, and print nothing of the Secret files. What needs a running server follows: each
     config without object storage is started on 127.0.0.1 and the probes' paths, client
     authentication and TLS are checked over HTTP(S); a config with object storage is started with
     the pod's literal AWS_* variables, dummy keys and AWS_ENDPOINT_URL_S3 pointing at a local
     endpoint that has no buckets (404 NoSuchBucket at once; a closed port would be retried for
     seconds), and must get as far as "cannot list the bucket" for its own storage URL, having asked
     for that bucket and prefix. `ocicache hosts` must produce the same host table.

Prints problems to stderr and a JSON summary on the last line of stdout; exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import functools
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/ocicache"
PLAIN = sorted((ROOT / "deploy/kubernetes").glob("*.yaml"))
# The chart scenario each plain manifest file must equal.
PLAIN_SCENARIOS = {"ocicache.yaml": "plain", "ocicache-s3.yaml": "plain-s3"}
HOSTS_TOML = ROOT / "deploy/containerd/hosts.toml"
IMAGE = "registry.example.com/ocicache"

problems: list[str] = []
notes: list[str] = []
verbose = False


def problem(msg: str) -> None:
    problems.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr)


def step(msg: str) -> None:
    if verbose:
        print(f"== {msg}", file=sys.stderr)


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def seconds(d) -> float | None:
    """A duration as ocicache reads the common forms: 30s, 1m30s, 250ms, 2h, 30d, or bare seconds."""
    s = str(d).strip()
    if re.fullmatch(r"\d+", s):
        return float(s)
    parts = re.findall(r"(\d+)(ms|d|h|m|s)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        return None
    unit = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * unit[u] for n, u in parts)


def size_bytes(v) -> float | None:
    """A size as ocicache reads it: 50GiB, 500MB, 1.5TiB, or bare bytes."""
    m = re.fullmatch(r"([0-9.]+)\s*([kmgt]i?)?b?", str(v).strip().lower())
    if not m:
        return None
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    return float(m.group(1)) * scale[m.group(2) or ""]


def same_setting(want, got) -> bool:
    """Whether ocicache's printed value is the file's: durations and sizes may be written otherwise
    (`60s` is printed `1m`)."""
    if want == got:
        return True
    if isinstance(want, bool) or isinstance(got, bool) or not isinstance(want, (str, int)) or not isinstance(got, (str, int)):
        return False
    return any(f(want) is not None and f(want) == f(got) for f in (seconds, size_bytes))


# ------------------------------------------------------------------ scenarios
# Values given to the chart, on top of image.repository. Each rendering is validated as a whole.
SCENARIOS = {
    "defaults": {},
    # The plain manifests are this rendering (release "ocicache" in namespace "ocicache").
    "plain": {"nodeConfigurator": {"enabled": True}},
    "everything": {
        "credentials": {"existingSecret": "ocicache-creds"},
        "dockerConfig": {"existingSecret": "ocicache-pull"},
        "htpasswd": {"enabled": True, "existingSecret": "ocicache-htpasswd", "metricsAuth": True},
        "tls": {"enabled": True, "existingSecret": "ocicache-tls"},
        "maxSize": "100GiB",
        "maxAge": "30d",
        "config": {
            "immutableTags": r"^v?[0-9]+(\.[0-9]+){2}$",
            "privateRegistries": ["registry.corp.example"],
            "allowRegistries": ["*.corp.example"],
            "upstreams": {"registry.corp.example": ["https://mirror-a.corp.example", "https://mirror-b.corp.example"]},
            "registries": {
                "registry.corp.example": {"ca": "/etc/ocicache/extra/corp-ca.pem"},
                "mtls.corp.example": {
                    "client_cert": "/etc/ocicache/extra/client.crt",
                    "client_key": "/etc/ocicache/extra/client.key",
                },
                "us-docker.pkg.dev": {"credential_helper": "gcr"},
                "123456789012.dkr.ecr.eu-central-1.amazonaws.com": {"credential_helper": "ecr-login"},
            },
            "extraToml": "# appended from config.extraToml",
        },
        "extraVolumes": [{"name": "extra", "secret": {"secretName": "ocicache-extra"}}],
        "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc/ocicache/extra", "readOnly": True}],
        "extraEnv": [{"name": "AWS_ECR_DISABLE_CACHE", "value": "true"}],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/ocicache"}},
        "serviceMonitor": {
            "enabled": True,
            "basicAuth": {"username": {"name": "m", "key": "username"}, "password": {"name": "m", "key": "password"}},
            "tlsConfig": {"ca": {"secret": {"name": "ocicache-tls", "key": "ca.crt"}}, "serverName": "localhost"},
        },
        "prometheusRule": {"enabled": True},
        "warmFromCluster": {"enabled": True},
        "nodeConfigurator": {"enabled": True, "ca": "/etc/containerd/certs.d/ocicache-ca.pem"},
    },
    "daemonset": {
        "kind": "DaemonSet",
        "hostNetwork": True,
        "persistence": {"type": "hostPath"},
        "tls": {"enabled": True, "existingSecret": "ocicache-tls"},
        "nodeConfigurator": {"enabled": True, "skipVerify": True},
        "config": {"listen": "::", "shutdownDelay": "10s", "shutdownTimeout": "1m"},
        "terminationGracePeriodSeconds": 90,
    },
    "emptydir": {"replicaCount": 2, "persistence": {"type": "emptyDir", "emptyDir": {"sizeLimit": "20Gi"}}},
    # Object storage: static keys from a Secret, the China endpoint, a prefix given with slashes.
    "s3": {
        "replicaCount": 3,
        "s3": {
            "enabled": True,
            "bucket": "cache-bucket",
            "prefix": "/team/ocicache/",
            "region": "cn-north-1",
            "endpoint": "https://s3.cn-north-1.amazonaws.com.cn",
            "existingSecret": "ocicache-s3",
            "env": {"AWS_ENDPOINT_URL_STS": "https://sts.cn-north-1.amazonaws.com.cn"},
            "stagingSizeLimit": "50Gi",
        },
        "redirectBlobs": {"enabled": True, "ttl": "2m", "skipUserAgent": "^legacy-client/"},
        # Peers are checked in s3-peers (see PEER_KEYS).
        "peers": {"enabled": False},
        "maxAge": "7d",
        "extraEnv": [{"name": "NO_PROXY", "value": ".amazonaws.com.cn"}],
    },
    # One cache per node sharing a bucket; persistence.* is ignored (no hostPath, no init container).
    "s3-daemonset": {
        "kind": "DaemonSet",
        "hostNetwork": True,
        "persistence": {"type": "hostPath"},
        "s3": {"enabled": True, "bucket": "cache-bucket", "stagingSizeLimit": ""},
    },
    # Replicated pods on a bucket that find each other: POD_IP from the downward API in
    # --advertise-url, the shared secret generated by the chart and mounted as peer_secret_file.
    "s3-peers": {
        "replicaCount": 3,
        "s3": {"enabled": True, "bucket": "cache-bucket"},
        "tls": {"enabled": True, "existingSecret": "ocicache-tls"},
    },
    # deploy/kubernetes/ocicache-s3.yaml is this rendering. Peers stay off in the plain file: its
    # Secret would hold the same published value for everyone who applies it. The chart generates
    # one per release (or takes peers.existingSecret).
    "plain-s3": {
        "peers": {"enabled": False},
        "nodeConfigurator": {"enabled": True},
        "replicaCount": 3,
        "s3": {"enabled": True, "bucket": "my-ocicache-bucket", "prefix": "ocicache", "region": "eu-central-1"},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/ocicache-s3"}},
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "20Gi"},
            "limits": {"memory": "2Gi"},
        },
    },
}

# What each scenario's ocicache.toml must contain (beyond the generic checks).
EXPECT_TOML = {
    "everything": {
        "max_size": "100GiB",
        "max_age": "30d",
        "metrics_auth": True,
        "htpasswd": "/etc/ocicache/htpasswd/htpasswd",
        "tls_cert": "/etc/ocicache/tls/tls.crt",
        "docker_config": "/etc/ocicache/docker-config/config.json",
        "creds_file": "/etc/ocicache/creds/creds.yaml",
    },
    "daemonset": {"listen": "::"},
    "emptydir": {"max_size": "18GiB"},
    "s3": {
        "storage": "s3://cache-bucket/team/ocicache",
        "max_size": "25GiB",
        "max_age": "7d",
        "redirect_blobs": "2m",
        "redirect_blobs_skip_user_agent": "^legacy-client/",
        "peer_secret_file": None,
    },
    "s3-peers": {"storage": "s3://cache-bucket", "peer_secret_file": "/etc/ocicache/peer/peer-secret", "redirect_blobs": None},
    "defaults": {"max_size": "45GiB", "shutdown_delay": "5s", "redirect_blobs": None, "peer_secret_file": None},
    "s3-daemonset": {"storage": "s3://cache-bucket", "max_size": None},
    "plain-s3": {"storage": "s3://my-ocicache-bucket/ocicache", "max_size": "10GiB"},
}

# The cache container's environment in a scenario: literal values, or ("secret", name, key).
EXPECT_ENV = {
    "s3": {
        "AWS_REGION": "cn-north-1",
        "AWS_ENDPOINT_URL_S3": "https://s3.cn-north-1.amazonaws.com.cn",
        "AWS_ENDPOINT_URL_STS": "https://sts.cn-north-1.amazonaws.com.cn",
        "AWS_ACCESS_KEY_ID": ("secret", "ocicache-s3", "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": ("secret", "ocicache-s3", "AWS_SECRET_ACCESS_KEY"),
        "NO_PROXY": ".amazonaws.com.cn",
    },
    "s3-daemonset": {},
    "s3-peers": {},
    "plain-s3": {"AWS_REGION": "eu-central-1"},
}

# Settings of peers (the replicas finding each other): an ocicache that does not know them yet
# refuses them, so configs with them are checked only by a binary that has --peer-secret-file.
PEER_KEYS = ("peer_secret_file", "advertise_url")

# Values the chart must refuse, and a piece of its message.
MUST_FAIL = {
    "s3 without a bucket": ({"s3": {"enabled": True}}, "s3.enabled needs s3.bucket"),
    "s3 bucket as a URL": ({"s3": {"enabled": True, "bucket": "s3://bucket/prefix"}}, "is not a bucket name"),
    "s3 keys in values": (
        {"s3": {"enabled": True, "bucket": "b", "env": {"AWS_SECRET_ACCESS_KEY": "x"}}},
        "keys do not belong in values",
    ),
    "s3 region twice": (
        {"s3": {"enabled": True, "bucket": "b", "region": "eu-west-1", "env": {"AWS_REGION": "eu-west-1"}}},
        "set the same variable",
    ),
    "htpasswd without a Secret": ({"htpasswd": {"enabled": True}}, "htpasswd.existingSecret"),
    "metricsAuth without htpasswd": ({"htpasswd": {"metricsAuth": True}}, "needs htpasswd.enabled"),
    "tls without a Secret": ({"tls": {"enabled": True}}, "tls.existingSecret"),
    "grace period too short": ({"terminationGracePeriodSeconds": 35}, "must be larger than config.shutdownDelay"),
    "DaemonSet with one claim": ({"kind": "DaemonSet"}, "cannot share one PersistentVolumeClaim"),
    "replicas on a ReadWriteOnce claim": ({"replicaCount": 2}, "ReadWriteOnce"),
    "no image": ({"image": {"repository": ""}}, "image.repository is required"),
    "bad maxSize": ({"maxSize": "lots"}, "is not a size"),
    "skipVerify without TLS": ({"nodeConfigurator": {"enabled": True, "skipVerify": True}}, "https:// mirror"),
    "redirects without a bucket": ({"redirectBlobs": {"enabled": True}}, "it needs s3.enabled"),
    "redirect URLs valid too long": (
        {"s3": {"enabled": True, "bucket": "b"}, "redirectBlobs": {"enabled": True, "ttl": "2h"}},
        "a duration from 10s to 1h",
    ),
    "peers without a bucket": ({"peers": {"enabled": True}}, "they need s3.enabled"),
    "peers neither on nor off": ({"peers": {"enabled": "yes"}}, "peers.enabled must be auto, true or false"),
    "endpoints twice": (
        {"config": {"upstreams": {"r.example": ["https://a"]}, "registries": {"r.example": {"endpoints": ["https://b"]}}}},
        "endpoints in both",
    ),
}

HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}


# ------------------------------------------------------------------ helpers on objects
def objects_of(rendered: dict[str, str], where: str) -> list[dict]:
    out = []
    for name, text in sorted(rendered.items()):
        if not name.endswith((".yaml", ".yml")):
            continue
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            problem(f"{where}: {name} is not YAML: {e}")
            continue
        for d in docs:
            if not isinstance(d, dict) or not all(k in d for k in ("apiVersion", "kind", "metadata")):
                problem(f"{where}: {name}: a document without apiVersion/kind/metadata")
                continue
            d.setdefault("metadata", {})
            out.append(d)
    return out


def find(objs: list[dict], kind: str, name: str | None = None) -> dict | None:
    for o in objs:
        if o["kind"] == kind and (name is None or o["metadata"].get("name") == name):
            return o
    return None


def toml_of(cm: dict, key: str, where: str):
    text = (cm.get("data") or {}).get(key)
    if text is None:
        problem(f"{where}: ConfigMap {cm['metadata']['name']} has no {key}")
        return None, None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        problem(f"{where}: ConfigMap {cm['metadata']['name']} {key} is not TOML: {e}")
        return None, text


def cache_workload(objs: list[dict]) -> dict | None:
    for o in objs:
        if o["kind"] in ("Deployment", "DaemonSet") and (o["metadata"].get("labels") or {}).get(
            "app.kubernetes.io/component"
        ) == "cache":
            return o
    return None


def toml_files(cfg: dict) -> list[tuple[str, str]]:
    """(key, path) of every file ocicache.toml names."""
    keys = ("creds_file", "docker_config", "htpasswd", "tls_cert", "tls_key", "peer_secret_file")
    out = [(k, cfg[k]) for k in keys if cfg.get(k)]
    for name, reg in (cfg.get("registries") or {}).items():
        for k in ("ca", "client_cert", "client_key"):
            if reg.get(k):
                out.append((f'registries."{name}".{k}', reg[k]))
    return out


def container_env(wl: dict | None) -> dict:
    """The ocicache container's environment: a literal value, or ("secret", name, key)."""
    if wl is None:
        return {}
    c = next((c for c in wl["spec"]["template"]["spec"]["containers"] if c["name"] == "ocicache"), {})
    out = {}
    for e in c.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        out[e["name"]] = ("secret", ref.get("name"), ref.get("key")) if ref else e.get("value")
    return out


# ------------------------------------------------------------------ checks
def check_storage(where: str, objs: list[dict], cfg: dict, wl: dict, volumes: dict) -> None:
    """With object storage: the cache volume only stages, no claim, rolling updates, AWS_* wiring."""
    storage = cfg["storage"]
    if not re.fullmatch(r"s3://[A-Za-z0-9][A-Za-z0-9._-]*(/[^/]+)*", storage):
        problem(f"{where}: storage = {storage!r} is not s3://bucket[/prefix]")
    if "bucket" in cfg:
        problem(f"{where}: both storage and bucket in ocicache.toml (ocicache refuses that)")
    if "emptyDir" not in volumes.get("cache", {}):
        problem(f"{where}: with storage the cache volume should be an emptyDir (it only stages fills), not {volumes.get('cache')}")
    for o in objs:
        if o["kind"] == "PersistentVolumeClaim":
            problem(f"{where}: PersistentVolumeClaim {o['metadata'].get('name')} rendered although the cache is in {storage}")
    if wl["kind"] == "Deployment" and (wl["spec"].get("strategy") or {}).get("type") != "RollingUpdate":
        problem(f"{where}: the pods share {storage}, but the Deployment does not roll (strategy {wl['spec'].get('strategy')})")
    if any(c["name"] == "cache-dir-owner" for c in wl["spec"]["template"]["spec"].get("initContainers") or []):
        problem(f"{where}: a hostPath init container although the cache is in {storage}")
    env = container_env(wl)
    if ("AWS_ACCESS_KEY_ID" in env) != ("AWS_SECRET_ACCESS_KEY" in env):
        problem(f"{where}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if name in env and not isinstance(env[name], tuple):
            problem(f"{where}: {name} is a literal in the pod spec, not from a Secret")


def check_replicas(where: str, objs: list[dict], cfg: dict, wl: dict, c: dict) -> None:
    """Replicas are spread over nodes; peers advertise their pod IP and share a mounted secret."""
    pod = wl["spec"]["template"]["spec"]
    if wl["kind"] == "Deployment" and wl["spec"].get("replicas", 1) > 1:
        anti = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get("preferredDuringSchedulingIgnoredDuringExecution") or []
        if not any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname" for t in anti):
            problem(f"{where}: {wl['spec']['replicas']} replicas without a preferred pod anti-affinity by hostname")
        if find(objs, "PodDisruptionBudget") is None:
            problem(f"{where}: {wl['spec']['replicas']} replicas without a PodDisruptionBudget")
    args = c.get("args") or []
    advertise = [a for a in args if a.startswith("--advertise-url=")]
    if not cfg.get("peer_secret_file"):
        if advertise:
            problem(f"{where}: --advertise-url without peer_secret_file")
        return
    if not cfg.get("storage"):
        problem(f"{where}: peers without object storage")
    scheme = "https" if cfg.get("tls_cert") else "http"
    if advertise != [f"--advertise-url={scheme}://$(POD_IP):{cfg.get('port', 3000)}"]:
        problem(f"{where}: expected --advertise-url={scheme}://$(POD_IP):{cfg.get('port', 3000)}, got {advertise}")
    pod_ip = next((e for e in c.get("env") or [] if e["name"] == "POD_IP"), None)
    if ((pod_ip or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") != "status.podIP":
        problem(f"{where}: POD_IP is not the downward API's status.podIP: {pod_ip}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secret = (volumes.get("peer") or {}).get("secret", {}).get("secretName")
    rendered = find(objs, "Secret", secret)
    if secret is None:
        problem(f"{where}: peer_secret_file is not mounted from a Secret")
    elif rendered is not None and not all((rendered.get("data") or {}).values()):
        problem(f"{where}: the generated peer Secret {secret} is empty")


def check_wiring(where: str, objs: list[dict]) -> tuple[dict | None, str | None, dict | None]:
    """Consistency inside one set of objects; returns (parsed ocicache.toml, its text, workload)."""
    cm = next(
        (o for o in objs if o["kind"] == "ConfigMap" and "ocicache.toml" in (o.get("data") or {})), None
    )
    wl = cache_workload(objs)
    if cm is None or wl is None:
        problem(f"{where}: no ConfigMap with ocicache.toml or no cache Deployment/DaemonSet")
        return None, None, wl
    cfg, text = toml_of(cm, "ocicache.toml", where)
    if cfg is None:
        return None, text, wl
    pod = wl["spec"]["template"]["spec"]
    c = next((c for c in pod["containers"] if c["name"] == "ocicache"), None)
    if c is None:
        problem(f"{where}: no container named ocicache")
        return cfg, text, wl
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = c.get("volumeMounts", [])
    for m in mounts:
        if m["name"] not in volumes:
            problem(f"{where}: volumeMount {m['name']} has no volume")
    cfg_mount = next((m for m in mounts if m["mountPath"] == "/etc/ocicache/ocicache.toml"), None)
    if not cfg_mount or volumes.get(cfg_mount["name"], {}).get("configMap", {}).get("name") != cm["metadata"]["name"]:
        problem(f"{where}: ocicache.toml of ConfigMap {cm['metadata']['name']} is not mounted at /etc/ocicache/ocicache.toml")
    if "--config=/etc/ocicache/ocicache.toml" not in (c.get("args") or []):
        problem(f"{where}: the container is not started with --config=/etc/ocicache/ocicache.toml")
    cache = next((m for m in mounts if m["name"] == "cache"), None)
    if not cache or cache["mountPath"] != cfg.get("cache_dir"):
        problem(f"{where}: the cache volume is not mounted at cache_dir {cfg.get('cache_dir')!r}")
    if cfg.get("storage"):
        check_storage(where, objs, cfg, wl, volumes)
    check_replicas(where, objs, cfg, wl, c)
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    if ports.get("http") != cfg.get("port", 3000):
        problem(f"{where}: containerPort http {ports.get('http')} != port {cfg.get('port', 3000)}")
    # Every file the config names is on a mount, and a Secret/ConfigMap item of that name exists.
    for key, path in toml_files(cfg):
        m = max(
            (m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")),
            key=lambda m: len(m["mountPath"]),
            default=None,
        )
        if m is None:
            problem(f"{where}: {key} = {path!r} is on no volumeMount of the ocicache container")
            continue
        rel = path[len(m["mountPath"].rstrip("/")) + 1 :]
        vol = volumes.get(m["name"], {})
        source = vol.get("secret") or vol.get("configMap") or {}
        items = source.get("items")
        if items is not None and rel not in {i["path"] for i in items}:
            problem(f"{where}: {key} = {path!r}, but volume {m['name']} has no item with path {rel!r}")
        if m.get("subPath"):
            problem(f"{where}: {key} is mounted with subPath, so updates of its Secret never reach the pod")
    # TLS: probes use HTTPS exactly when the cache serves it.
    tls = bool(cfg.get("tls_cert"))
    for probe in ("livenessProbe", "readinessProbe"):
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            problem(f"{where}: {probe} has no httpGet")
            continue
        scheme = get.get("scheme", "HTTP")
        if scheme != ("HTTPS" if tls else "HTTP"):
            problem(f"{where}: {probe} scheme {scheme} while the cache serves {'HTTPS' if tls else 'HTTP'}")
    # Kubernetes must not kill ocicache before its own shutdown is done.
    delay, timeout = seconds(cfg.get("shutdown_delay", 0)), seconds(cfg.get("shutdown_timeout", 30))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if delay is None or timeout is None:
        problem(f"{where}: shutdown_delay/shutdown_timeout not understood")
    elif grace <= delay + timeout:
        problem(f"{where}: terminationGracePeriodSeconds {grace} <= shutdown_delay + shutdown_timeout ({delay + timeout:g}s)")
    # The node configurator's mirror URL matches the cache.
    hosts_cm = next((o for o in objs if o["kind"] == "ConfigMap" and "hosts.toml" in (o.get("data") or {})), None)
    if hosts_cm is not None:
        hosts, _ = toml_of(hosts_cm, "hosts.toml", where)
        urls = list((hosts or {}).get("host", {}))
        if len(urls) != 1 or not urls[0].startswith("https://" if tls else "http://"):
            problem(f"{where}: hosts.toml mirror {urls} does not match the cache's {'https' if tls else 'http'}")
        elif sorted(hosts["host"][urls[0]].get("capabilities", [])) != ["pull", "resolve"]:
            problem(f"{where}: hosts.toml capabilities are not pull, resolve")
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        for ep in sm["spec"].get("endpoints", []):
            if (ep.get("scheme", "http") == "https") != tls:
                problem(f"{where}: ServiceMonitor scheme {ep.get('scheme', 'http')} while TLS is {'on' if tls else 'off'}")
    return cfg, text, wl


def ocicache_toml_of(objs: list[dict]) -> dict | None:
    cm = next((o for o in objs if o["kind"] == "ConfigMap" and "ocicache.toml" in (o.get("data") or {})), None)
    try:
        return tomllib.loads(cm["data"]["ocicache.toml"]) if cm else None
    except tomllib.TOMLDecodeError:
        return None


def check_schemas(where: str, objs: list[dict], versions: list[str]) -> int:
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils

    if not hasattr(kv_utils.schema_contents, "cache_info"):
        # It reads the (large) definitions file again for every object: read each file once.
        kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)
    valid = 0
    for o in objs:
        ident = f"{o['kind']} {o['metadata'].get('name')}"
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            # No schema in kubernetes-validate: the fields the Prometheus Operator needs.
            spec = o.get("spec") or {}
            ok = (o["kind"] == "ServiceMonitor" and spec.get("selector") and spec.get("endpoints")) or (
                o["kind"] == "PrometheusRule" and all(r.get("expr") for g in spec.get("groups", []) for r in g.get("rules", []))
            )
            if not ok:
                problem(f"{where}: {ident}: incomplete")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(o, v, strict=True)
                valid += 1
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                problem(f"{where}: {ident} against Kubernetes {v}: {path}: {e.message}")
            except Exception as e:  # SchemaNotFoundError (a typo in kind or apiVersion), unsupported version
                problem(f"{where}: {ident}: cannot validate against Kubernetes {v}: {type(e).__name__}: {e}")
    return valid


def strip_helm(o):
    if isinstance(o, dict):
        out = {}
        for k, v in o.items():
            if k in HELM_LABELS or k.startswith("checksum/"):
                continue
            v = strip_helm(v)
            if k == "annotations" and not v:
                continue
            out[k] = v
        return out
    if isinstance(o, list):
        return [strip_helm(x) for x in o]
    return o


def diff_paths(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                yield f"{path}/{k}: only in the plain manifest"
            elif k not in b:
                yield f"{path}/{k}: only in the chart"
            else:
                yield from diff_paths(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diff_paths(x, y, f"{path}/{i}")
    elif a != b:
        yield f"{path}: chart {json.dumps(a)[:120]} != plain {json.dumps(b)[:120]}"


def compare_plain(chart_objs: list[dict], plain_objs: list[dict], fname: str) -> None:
    key = lambda o: (o["kind"], o["metadata"].get("name"))
    chart = {key(o): o for o in chart_objs}
    plain = {key(o): o for o in plain_objs}
    for k in sorted(set(chart) - set(plain)):
        problem(f"plain manifests {fname}: no {k[0]} {k[1]} (the chart renders it)")
    for k in sorted(set(plain) - set(chart)):
        if k[0] != "Namespace":
            problem(f"plain manifests {fname}: {k[0]} {k[1]} is not in the chart's rendering")
    for k in sorted(set(chart) & set(plain)):
        a, b = strip_helm(chart[k]), strip_helm(plain[k])
        if k[0] == "ConfigMap":
            for field in sorted(set(a.get("data", {})) | set(b.get("data", {}))):
                ta, tb = a.get("data", {}).get(field), b.get("data", {}).get(field)
                if field.endswith(".toml") and ta is not None and tb is not None:
                    try:
                        pa, pb = tomllib.loads(ta), tomllib.loads(tb)
                    except tomllib.TOMLDecodeError:
                        continue  # reported by check_wiring
                    for d in diff_paths(pa, pb, f"{field}"):
                        problem(f"plain manifests {fname}: ConfigMap {k[1]} {d}")
                elif ta != tb:
                    problem(f"plain manifests {fname}: ConfigMap {k[1]} {field} differs from the chart's")
            a.pop("data", None)
            b.pop("data", None)
        for d in diff_paths(a, b):
            problem(f"plain manifests {fname}: {k[0]} {k[1]} {d}")
    ns = find(plain_objs, "Namespace", "ocicache")
    if ns is None:
        problem(f"plain manifests {fname}: no Namespace ocicache")


def check_values_paths() -> int:
    """Every .Values path a template reads exists in values.yaml (also in branches no scenario renders)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    n = 0
    for tpl in sorted((CHART / "templates").glob("*")):
        n += 1
        for path in sorted(set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", tpl.read_text()))):
            node = values
            for part in path.strip(".").split("."):
                if not isinstance(node, dict) or part not in node:
                    problem(f"{tpl.relative_to(ROOT)}: .Values{path} is not in values.yaml")
                    break
                node = node[part]
    return n


def yamllint_texts(items: list[tuple[str, str]], relaxed: bool) -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    rules = "{line-length: {max: 160}, document-start: disable"
    if relaxed:  # helm's toYaml writes sequences unindented and long lines
        rules = "{document-start: disable, line-length: disable, indentation: {indent-sequences: whatever}, empty-lines: {max: 1, max-start: 1}"
    conf = YamlLintConfig("{extends: default, rules: " + rules + "}}")
    for name, text in items:
        for p in linter.run(text, conf):
            problem(f"yamllint {name}:{p.line}:{p.column}: {p.level}: {p.desc} ({p.rule})")


# ------------------------------------------------------------------ running ocicache
class Fixtures:
    """Files standing in for the Secrets a rendered config names."""

    def __init__(self, work: Path):
        self.dir = work / "fixtures"
        self.dir.mkdir(parents=True, exist_ok=True)
        # What check-config must never print: the contents of the files (paths only).
        self.secrets = ["fixture-password-5bd0", "$2y$05$Wj0gJ7ioZ9dDgO7a6P2tN.zjJ1m0D9s7xvRz7x8z0ZrO0x8QyQ9uG",
                        "fixture-peer-secret-0e7c1f9a2b4d6e8f"]
        (self.dir / "creds.yaml").write_text(f"registry.corp.example:\n  username: puller\n  password: {self.secrets[0]}\n")
        (self.dir / "config.json").write_text(
            json.dumps({"auths": {"ghcr.io": {"auth": "dTpw"}}, "credHelpers": {"us-docker.pkg.dev": "gcr"}})
        )
        # A bcrypt entry as htpasswd -B writes it (user "u", password "p"; only read, never verified here).
        (self.dir / "htpasswd").write_text(f"u:{self.secrets[1]}\n")
        (self.dir / "peer-secret").write_text(self.secrets[2])
        self.tls = False
        if shutil.which("openssl"):
            r = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(self.dir / "tls.key"), "-out", str(self.dir / "tls.crt"), "-days", "2",
                 "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                capture_output=True, text=True, timeout=30,
            )
            self.tls = r.returncode == 0
            if not self.tls:
                notes.append("openssl could not make a test certificate: TLS configs not started")
        else:
            notes.append("no openssl: TLS configs not started")

    def path_for(self, key: str) -> Path:
        name = {"creds_file": "creds.yaml", "docker_config": "config.json", "htpasswd": "htpasswd",
                "tls_cert": "tls.crt", "tls_key": "tls.key", "peer_secret_file": "peer-secret"}.get(key)
        if name is None:  # registries.*.ca / client_cert / client_key
            name = "tls.key" if key.endswith("client_key") else "tls.crt"
        return self.dir / name


def write_config(where: str, cfg: dict, text: str, fixtures: Fixtures, work: Path):
    """Writes the config with its Secret files replaced by fixtures; None when it needs TLS fixtures
    that could not be made. Returns (slug, path)."""
    needs_tls = any(k in ("tls_cert", "tls_key") or k.endswith(("ca", "client_cert", "client_key")) for k, _ in toml_files(cfg))
    if needs_tls and not fixtures.tls:
        return None
    for key, path in toml_files(cfg):
        text = text.replace(json.dumps(path), json.dumps(str(fixtures.path_for(key))))
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower())
    conf = work / f"{slug}.toml"
    conf.write_text(text)
    return slug, conf


def settings_of(cfg: dict, path: tuple = ()):
    """(path of keys, value) of every setting of a parsed config, those of [registries.*] included."""
    for k, v in cfg.items():
        if isinstance(v, dict):
            yield from settings_of(v, path + (k,))
        else:
            yield path + (k,), v


def check_config(binary: str, where: str, cfg: dict, text: str, fixtures: Fixtures, work: Path) -> Path | None:
    """`ocicache check-config` on the config (Secret files replaced by fixtures): it must accept it
    and print each setting with the file's value and nothing of the Secret files. Returns the
    config's path when accepted; None when refused or when it needs TLS fixtures that could not be made."""
    written = write_config(where, cfg, text, fixtures, work)
    if written is None:
        return None
    _, conf = written
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCICACHE_")}
    r = subprocess.run([binary, "check-config", "--config", str(conf)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, env=env, timeout=30)
    if r.returncode != 0:
        problem(f"{where}: `ocicache check-config` refuses its ocicache.toml (exit {r.returncode}): "
                f"{' | '.join(r.stderr.strip().splitlines()[-3:]) or 'no output'}")
        return None
    try:
        printed = tomllib.loads(r.stdout)
    except tomllib.TOMLDecodeError as e:
        problem(f"{where}: `ocicache check-config` printed no TOML ({e})")
        return None
    for path, want in settings_of(tomllib.loads(conf.read_text())):
        got = functools.reduce(lambda t, k: t.get(k) if isinstance(t, dict) else None, path, printed)
        if not same_setting(want, got):
            problem(f"{where}: `ocicache check-config` says {'.'.join(path)} = {got!r}; the file says {want!r}")
    for secret in fixtures.secrets:
        if secret in r.stdout:
            problem(f"{where}: `ocicache check-config` printed the contents of a Secret file ({secret[:8]}...)")
    return conf


def run_config(binary: str, where: str, conf: Path, cfg: dict, work: Path) -> bool:
    """Starts ocicache on the (checked) config; checks probes, client authentication and TLS."""
    slug = conf.stem
    log_path = work / f"{slug}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCICACHE_") and "PROXY" not in k.upper()}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [binary, "--config", str(conf), "--listen", "127.0.0.1", "--port", "0",
             "--cache-dir", str(work / f"cache-{slug}"), "--shutdown-delay", "0s", "--shutdown-timeout", "2s"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        port = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r'listen["=:]+"?127\.0\.0\.1:(\d+)', log_path.read_text(errors="replace"))
            if m and "ocicache serving" in log_path.read_text(errors="replace"):
                port = int(m.group(1))
                break
            time.sleep(0.05)
        if port is None:
            out = log_path.read_text(errors="replace").strip().splitlines()
            problem(f"{where}: ocicache did not start on its ocicache.toml: {' | '.join(out[-3:]) or 'no output'}")
            return True
        check_http(where, cfg, port)
        return True
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class NoBucketEndpoint:
    """A local S3 endpoint that has no buckets: every request gets S3's 404 NoSuchBucket at once
    (a 4xx is not retried, unlike a refused connection). Records the paths it was asked for."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code>'
            b"<Message>The specified bucket does not exist (deploy/validate.py)</Message></Error>")

    def __init__(self):
        import http.server
        import threading

        paths = self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                paths.append(self.path)
                self.send_response(404)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(NoBucketEndpoint.BODY)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(NoBucketEndpoint.BODY)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def run_storage_config(binary: str, where: str, conf: Path, cfg: dict, env_of_pod: dict, work: Path,
                       endpoint: NoBucketEndpoint) -> bool:
    """ocicache on a (checked) config with object storage and the pod's AWS_* variables, its endpoint
    replaced by one without buckets: it must fail listing exactly the bucket and prefix of its
    storage URL."""
    storage = cfg["storage"]
    slug = conf.stem
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCICACHE_", "AWS_")) and "PROXY" not in k.upper()}
    # The pod's literal AWS_* values (region, STS endpoint, ...). Keys from Secrets become dummies,
    # which also keeps the client away from instance metadata and STS.
    env.update({k: v for k, v in env_of_pod.items() if k.startswith("AWS_") and isinstance(v, str)})
    env.update({"AWS_ENDPOINT_URL_S3": endpoint.url, "AWS_ACCESS_KEY_ID": "validate", "AWS_SECRET_ACCESS_KEY": "validate"})
    env.pop("AWS_ENDPOINT_URL", None)
    asked = len(endpoint.paths)
    try:
        r = subprocess.run(
            [binary, "--config", str(conf), "--listen", "127.0.0.1", "--port", "0",
             "--cache-dir", str(work / f"cache-{slug}"), "--shutdown-delay", "0s", "--shutdown-timeout", "2s"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=30,
        )
    except subprocess.TimeoutExpired:
        problem(f"{where}: ocicache with {storage} and an endpoint without buckets was still running after 30s")
        return True
    out = r.stdout + r.stderr
    last = " | ".join(out.strip().splitlines()[-2:]) or "no output"
    if r.returncode == 0 or f"--storage {storage}: cannot list the bucket" not in out:
        problem(f"{where}: ocicache should read its ocicache.toml and stop at listing {storage} "
                f'("--storage {storage}: cannot list the bucket"), but exited {r.returncode}: {last}')
        return True
    bucket, _, prefix = storage[len("s3://"):].partition("/")
    want = f"/{bucket}?"
    listed = [p for p in endpoint.paths[asked:] if p.startswith(want)]
    key_prefix = urllib.parse.quote(f"{prefix}/blobs/" if prefix else "blobs/", safe="")
    if not any(f"prefix={key_prefix}" in p for p in listed):
        problem(f"{where}: ocicache did not list bucket {bucket!r} under {prefix or '(root)'!r}; it asked for {endpoint.paths[asked:]}")
    return True


def check_http(where: str, cfg: dict, port: int) -> None:
    scheme = "https" if cfg.get("tls_cert") else "http"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    auth = bool(cfg.get("htpasswd"))
    expect = {"/healthz": 200, "/readyz": 200, "/v2/": 401 if auth else 200,
              "/metrics": 401 if auth and cfg.get("metrics_auth") else 200}
    for path, want in expect.items():
        url = f"{scheme}://127.0.0.1:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10, context=ctx if scheme == "https" else None) as r:
                got = r.status
        except urllib.error.HTTPError as e:
            got = e.code
        except OSError as e:
            got = f"no answer ({e})"
        if got != want:
            problem(f"{where}: GET {url} answered {got}, expected {want}")


# ------------------------------------------------------------------ main
def main() -> int:
    global verbose
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="")
    ap.add_argument("--k8s-versions", default="1.25.0 1.33.0")
    ap.add_argument("--work", required=True)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    verbose = args.verbose
    work = Path(args.work)
    versions = args.k8s_versions.split()
    summary = {"objects": 0, "renderings": 0, "refusals": 0, "configs_checked": 0, "configs_started": 0, "storage_configs": 0,
               "versions": versions, "notes": notes}

    step("yamllint: plain manifests, Chart.yaml, values.yaml")
    yamllint_texts([(str(p.relative_to(ROOT)), p.read_text()) for p in PLAIN + [CHART / "Chart.yaml", CHART / "values.yaml"]], relaxed=False)

    step("template references")
    check_values_paths()

    try:
        import helm_python
        from helm_python.chart import Chart
    except Exception as e:  # no wheel of the helm library for this platform
        helm_python = None
        notes.append(f"chart NOT rendered (helm library unavailable: {e})")

    base = {"image": {"repository": IMAGE}}
    renderings: dict[str, list[dict]] = {}
    if helm_python is not None:
        step(f"helm {helm_python.helm_sdk_version()}: lint and render the chart")
        for lint_values in ({}, SCENARIOS["everything"], SCENARIOS["s3"]):
            res = helm_python.lint(str(CHART), values=merge(base, lint_values), strict=True, namespace="ocicache")
            for m in res.get("messages", []):
                if m.get("severity", 0) > 1:  # 1 is INFO ("icon is recommended")
                    problem(f"helm lint: {m.get('path')}: {m.get('error')}")
            for e in res.get("errors") or []:
                problem(f"helm lint: {e}")
        chart = Chart.load(str(CHART))
        for name, values in SCENARIOS.items():
            try:
                rendered = chart.render(values=merge(base, values), name="ocicache", namespace="ocicache", is_install=True)
            except Exception as e:
                problem(f"chart [{name}]: does not render: {e}")
                continue
            summary["renderings"] += 1
            yamllint_texts([(f"chart [{name}] {k}", v) for k, v in rendered.items() if k.endswith(".yaml") and v.strip()], relaxed=True)
            renderings[name] = objects_of(rendered, f"chart [{name}]")
            if not any(k.endswith("NOTES.txt") and v.strip() for k, v in rendered.items()):
                problem(f"chart [{name}]: NOTES.txt renders empty")
        for name, (values, message) in MUST_FAIL.items():
            try:
                chart.render(values=merge(base, values), name="ocicache", namespace="ocicache", is_install=True)
                problem(f"chart refuses nothing with {name} ({json.dumps(values)}); expected a failure saying {message!r}")
            except Exception as e:
                if message not in str(e):
                    problem(f"chart with {name}: failed with {e!s}, expected a message containing {message!r}")
                else:
                    summary["refusals"] += 1

    step("plain manifests")
    plain_sets: dict[str, list[dict]] = {}  # file name -> its objects
    for p in PLAIN:
        plain_sets[p.name] = objects_of({p.name: p.read_text()}, str(p.relative_to(ROOT)))
        if p.name not in PLAIN_SCENARIOS:
            problem(f"{p.relative_to(ROOT)}: no chart scenario to compare it with (PLAIN_SCENARIOS in deploy/validate.py)")

    step(f"Kubernetes schemas {', '.join(versions)} (strict)")
    for fname, objs in plain_sets.items():
        summary["objects"] += check_schemas(f"plain manifests {fname}", objs, versions)
    for name, objs in renderings.items():
        summary["objects"] += check_schemas(f"chart [{name}]", objs, versions)

    step("wiring, chart vs plain manifests, hosts.toml")
    configs = []  # (where, cfg, text, the cache container's environment)
    for fname, objs in plain_sets.items():
        cfg, text, wl = check_wiring(f"plain manifests {fname}", objs)
        if cfg is not None:
            configs.append((f"plain manifests {fname}", cfg, text, container_env(wl)))
    for name, objs in renderings.items():
        cfg, text, wl = check_wiring(f"chart [{name}]", objs)
        for k, want in EXPECT_TOML.get(name, {}).items():
            if cfg is not None and cfg.get(k) != want:
                problem(f"chart [{name}]: ocicache.toml {k} = {cfg.get(k)!r}, expected {want!r}")
        env = container_env(wl)
        for k, want in EXPECT_ENV.get(name, {}).items():
            if env.get(k) != want:
                problem(f"chart [{name}]: the cache container's {k} is {env.get(k)!r}, expected {want!r}")
        if name in EXPECT_ENV and any(k.startswith("AWS_") and k not in EXPECT_ENV[name] for k in env):
            problem(f"chart [{name}]: unexpected AWS_* variables {sorted(k for k in env if k not in EXPECT_ENV[name])}")
        if cfg is not None:
            configs.append((f"chart [{name}]", cfg, text, env))
    for fname, objs in plain_sets.items():
        scenario = PLAIN_SCENARIOS.get(fname)
        if scenario in renderings:
            compare_plain(renderings[scenario], objs, fname)
    if "everything" in renderings:
        # The plain manifests carry the optional Secrets as comments: the same paths as the chart.
        cfg = ocicache_toml_of(renderings["everything"])
        plain_text = "\n".join(p.read_text() for p in PLAIN)
        for key, path in toml_files(cfg or {}):
            if not key.startswith("registries.") and f'# {key} = "{path}"' not in plain_text:
                problem(f'plain manifests: no commented `{key} = "{path}"` (the chart\'s path) in the ConfigMap')
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    mirror = f"http://localhost:{values['service']['nodePort']}"
    try:
        hosts = tomllib.loads(HOSTS_TOML.read_text())
    except tomllib.TOMLDecodeError as e:
        problem(f"{HOSTS_TOML.relative_to(ROOT)}: {e}")
        hosts = None
    checked = [(str(HOSTS_TOML.relative_to(ROOT)), hosts)]
    for fname, objs in plain_sets.items():
        hosts_cm = find(objs, "ConfigMap", "ocicache-hosts")
        if hosts_cm:
            checked.append((f"plain manifests {fname} ocicache-hosts", toml_of(hosts_cm, "hosts.toml", f"plain manifests {fname}")[0]))
    for where, parsed in checked:
        expected = {"host": {mirror: {"capabilities": ["pull", "resolve"], "dial_timeout": "2000ms"}}}
        if parsed is not None and parsed != expected:
            problem(f"{where}: expected one [host.\"{mirror}\"] with capabilities pull, resolve and dial_timeout; got {parsed}")

    if args.binary:
        step(f"{args.binary}: every ocicache.toml through `ocicache check-config`, then started on 127.0.0.1 "
             "for probes, auth and TLS over HTTP(S), or up to listing its bucket")
        fixtures = Fixtures(work)
        endpoint = NoBucketEndpoint()
        helped = subprocess.run([args.binary, "--help"], capture_output=True, text=True, timeout=30).stdout
        knows_peers = "--peer-secret-file" in helped
        for where, cfg, text, env in configs:
            if not knows_peers and any(k in cfg for k in PEER_KEYS):
                notes.append(f"{where}: peer settings NOT checked ({args.binary} has no --peer-secret-file)")
                continue
            conf = check_config(args.binary, where, cfg, text, fixtures, work)
            if conf is None:
                continue
            summary["configs_checked"] += 1
            if cfg.get("storage"):
                if run_storage_config(args.binary, where, conf, cfg, env, work, endpoint):
                    summary["storage_configs"] += 1
            elif run_config(args.binary, where, conf, cfg, work):
                summary["configs_started"] += 1
        endpoint.close()
        r = subprocess.run([args.binary, "hosts", "--endpoint", mirror], capture_output=True, text=True, timeout=30)
        try:
            generated = tomllib.loads(r.stdout) if r.returncode == 0 else None
        except tomllib.TOMLDecodeError:
            generated = None
        if generated is None or hosts is None or generated.get("host") != hosts.get("host"):
            problem(f"`ocicache hosts --endpoint {mirror}` does not give the host table of {HOSTS_TOML.relative_to(ROOT)}: {r.stdout or r.stderr}")
    summary["problems"] = len(problems)
    print(json.dumps(summary))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
