{{/* Names, labels and checks shared by every template of the chart. */}}

{{- define "ocicache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's name when it already says "ocicache", release-ocicache otherwise. */}}
{{- define "ocicache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ocicache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ocicache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ocicache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ocicache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ocicache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ocicache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ocicache.image" -}}
{{- $repo := required "image.repository is required: build deploy/Containerfile, push the image to a registry your nodes can pull from, and set image.repository (and image.tag)" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "ocicache.helperImage" -}}
{{- printf "%s:%s" .Values.helperImage.repository .Values.helperImage.tag }}
{{- end }}

{{/* The claim the cache pods mount when persistence.type is pvc. */}}
{{- define "ocicache.claimName" -}}
{{- default (include "ocicache.fullname" .) .Values.persistence.existingClaim }}
{{- end }}

{{/* True (non-empty) when the chart makes its own PersistentVolumeClaim (never with s3.enabled). */}}
{{- define "ocicache.makesClaim" -}}
{{- if and (eq .Values.persistence.type "pvc") (not .Values.persistence.existingClaim) (not .Values.s3.enabled) }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the cache pods mount a PersistentVolumeClaim. */}}
{{- define "ocicache.usesClaim" -}}
{{- if and (eq .Values.persistence.type "pvc") (not .Values.s3.enabled) }}true{{ end }}
{{- end }}

{{/* storage = "s3://<bucket>[/<prefix>]" as rendered into ocicache.toml with s3.enabled. */}}
{{- define "ocicache.storageUrl" -}}
{{- $prefix := .Values.s3.prefix | default "" | toString | trim | trimAll "/" }}
{{- printf "s3://%s" (.Values.s3.bucket | toString | trim) }}{{ if $prefix }}/{{ $prefix }}{{ end }}
{{- end }}

{{/*
The cache container's environment: the AWS_* variables of s3.* (with s3.enabled), then extraEnv.
Empty when there is none.
*/}}
{{- define "ocicache.env" -}}
{{- if .Values.s3.enabled }}
{{- with .Values.s3.region }}
- name: AWS_REGION
  value: {{ . | toString | quote }}
{{- end }}
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | toString | quote }}
{{- end }}
{{- if .Values.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.secretAccessKeyKey }}
{{- end }}
{{- range $name, $value := .Values.s3.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the cache pods find each other as peers (peers.enabled, or auto). */}}
{{- define "ocicache.peers" -}}
{{- $v := .Values.peers.enabled | toString }}
{{- if eq $v "auto" }}
{{- if and .Values.s3.enabled (eq .Values.kind "Deployment") (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- else if eq $v "true" }}true
{{- end }}
{{- end }}

{{/* The Secret with the peers' shared secret. */}}
{{- define "ocicache.peerSecretName" -}}
{{- default (printf "%s-peer" (include "ocicache.fullname" .)) .Values.peers.existingSecret }}
{{- end }}

{{/* The mirror URL containerd is given in hosts.toml. */}}
{{- define "ocicache.mirrorEndpoint" -}}
{{- $scheme := ternary "https" "http" (.Values.tls.enabled | default false) }}
{{- if .Values.nodeConfigurator.endpoint }}
{{- .Values.nodeConfigurator.endpoint }}
{{- else if .Values.hostNetwork }}
{{- printf "%s://localhost:%d" $scheme (.Values.config.port | int) }}
{{- else }}
{{- printf "%s://localhost:%d" $scheme (required "service.nodePort is needed for the node configurator's mirror URL (or set nodeConfigurator.endpoint)" .Values.service.nodePort | int) }}
{{- end }}
{{- end }}

{{/* /etc/containerd/certs.d/_default/hosts.toml as the node configurator writes it. */}}
{{- define "ocicache.hostsToml" -}}
# ocicache ({{ .Release.Namespace }}/{{ include "ocicache.fullname" . }}) as the mirror of every registry.
# containerd (1.6.17+) sends every registry's pulls here with ?ns=<registry>, and falls back to the
# registry itself when the mirror is unreachable or answers an error.
[host.{{ include "ocicache.mirrorEndpoint" . | quote }}]
  capabilities = ["pull", "resolve"]
{{- with .Values.nodeConfigurator.dialTimeout }}
  # containerd 2.1+ skips a cache that does not accept the connection within this long (older: ignored).
  dial_timeout = {{ . | quote }}
{{- end }}
{{- if .Values.nodeConfigurator.ca }}
  ca = {{ .Values.nodeConfigurator.ca | toJson }}
{{- end }}
{{- if .Values.nodeConfigurator.skipVerify }}
  skip_verify = true
{{- end }}
{{- end }}

{{/*
max_size as rendered into ocicache.toml, or nothing for no limit. "auto" is 90% of the chart's claim
(persistence.size) or of persistence.emptyDir.sizeLimit, written in the same unit (50Gi -> 45GiB);
with s3.enabled half of s3.stagingSizeLimit (20Gi -> 10GiB): the local directory is then the disk
tier in front of the bucket (what this pod served lately, at disk speed), and the other half of the
volume is for fills in flight, which max_size does not bound.
*/}}
{{- define "ocicache.maxSize" -}}
{{- $v := .Values.maxSize | default "" | toString | trim }}
{{- if eq $v "auto" }}
{{- $size := "" }}
{{- $s3 := .Values.s3.enabled }}
{{- if $s3 }}
{{- $size = .Values.s3.stagingSizeLimit | default "" | toString }}
{{- else if eq (include "ocicache.makesClaim" .) "true" }}
{{- $size = .Values.persistence.size | toString }}
{{- else if eq .Values.persistence.type "emptyDir" }}
{{- $size = .Values.persistence.emptyDir.sizeLimit | default "" | toString }}
{{- end }}
{{- if $size }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti)$" $size) }}
{{- fail (printf "maxSize=auto cannot use the volume size %q (a quantity in k, M, G, T, Ki, Mi, Gi or Ti is needed): set maxSize to a size such as 45GiB, or \"\" for no limit" $size) }}
{{- end }}
{{- $num := regexReplaceAll "[A-Za-z]+$" $size "" | float64 }}
{{- $unit := regexReplaceAll "^[0-9.]+" $size "" }}
{{- $limit := ternary (divf $num 2) (mulf $num 0.9) $s3 }}
{{- if eq $limit (floor $limit) }}
{{- printf "%d%sB" (int64 $limit) $unit }}
{{- else }}
{{- printf "%.2f" $limit | trimSuffix "0" | trimSuffix "0" | trimSuffix "." }}{{ $unit }}B
{{- end }}
{{- end }}
{{- else if $v }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)? ?([KkMmGgTt][Ii]?)?[Bb]?$" $v) }}
{{- fail (printf "maxSize %q is not a size such as 45GiB, 500GB or 45Gi (or auto, or \"\" for no limit)" $v) }}
{{- end }}
{{- $v }}
{{- end }}
{{- end }}

{{/*
Whole seconds of a duration as ocicache reads it ("30s", "1m30s", "2m", "90"), or nothing when it is
written some other way (the binary still checks it at start).
*/}}
{{- define "ocicache.seconds" -}}
{{- $s := . | toString | trim }}
{{- if regexMatch "^[0-9]+$" $s }}
{{- $s }}
{{- else if regexMatch "^([0-9]+(h|m|s|ms))+$" $s }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(h|ms|m|s)" $s -1 }}
{{- $n := regexFind "^[0-9]+" . | atoi }}
{{- $u := regexReplaceAll "^[0-9]+" . "" }}
{{- if eq $u "h" }}{{ $total = add $total (mul $n 3600) }}
{{- else if eq $u "m" }}{{ $total = add $total (mul $n 60) }}
{{- else if eq $u "s" }}{{ $total = add $total $n }}
{{- else }}{{ $total = add $total (div $n 1000) }}
{{- end }}
{{- end }}
{{- $total }}
{{- end }}
{{- end }}

{{/* A probe from values; with tls.enabled its httpGet uses HTTPS. Called with (list $ probe). */}}
{{- define "ocicache.probe" -}}
{{- $root := index . 0 }}
{{- $probe := deepCopy (index . 1) }}
{{- if and $root.Values.tls.enabled (hasKey $probe "httpGet") }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* Refuses combinations that cannot work, with a message saying what to change. */}}
{{- define "ocicache.validate" -}}
{{- if not (has .Values.kind (list "Deployment" "DaemonSet")) }}
{{- fail (printf "kind must be Deployment or DaemonSet, not %q" .Values.kind) }}
{{- end }}
{{- if not (has .Values.persistence.type (list "pvc" "emptyDir" "hostPath")) }}
{{- fail (printf "persistence.type must be pvc, emptyDir or hostPath, not %q" .Values.persistence.type) }}
{{- end }}
{{- if .Values.s3.enabled }}
{{- $env := .Values.s3.env | default dict }}
{{- $bucket := .Values.s3.bucket | default "" | toString | trim }}
{{- if not $bucket }}
{{- fail "s3.enabled needs s3.bucket: the name of an existing bucket (ocicache lists it at start)" }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" $bucket) }}
{{- fail (printf "s3.bucket %q is not a bucket name: give only the name (my-cache), a path inside the bucket as s3.prefix, and another endpoint as s3.endpoint" $bucket) }}
{{- end }}
{{- if and .Values.s3.region (hasKey $env "AWS_REGION") }}
{{- fail "s3.env.AWS_REGION and s3.region set the same variable: keep s3.region" }}
{{- end }}
{{- if and .Values.s3.endpoint (hasKey $env "AWS_ENDPOINT_URL_S3") }}
{{- fail "s3.env.AWS_ENDPOINT_URL_S3 and s3.endpoint set the same variable: keep s3.endpoint" }}
{{- end }}
{{- range $key := list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN" }}
{{- if hasKey $env $key }}
{{- fail (printf "s3.env.%s: keys do not belong in values; put them in a Secret and set s3.existingSecret" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq .Values.kind "DaemonSet") (include "ocicache.usesClaim" .) }}
{{- fail "kind=DaemonSet cannot share one PersistentVolumeClaim between nodes: set persistence.type to hostPath or emptyDir, or share a bucket with s3.enabled" }}
{{- end }}
{{- if and (eq .Values.kind "Deployment") (include "ocicache.usesClaim" .) (gt (int .Values.replicaCount) 1) (not (has "ReadWriteMany" .Values.persistence.accessModes)) }}
{{- fail "replicaCount > 1 with one ReadWriteOnce claim: share a bucket with s3.enabled, or use kind=DaemonSet, persistence.type=emptyDir, or a ReadWriteMany claim" }}
{{- end }}
{{- if and .Values.redirectBlobs.enabled (not .Values.s3.enabled) }}
{{- fail "redirectBlobs.enabled redirects to presigned URLs of the bucket: it needs s3.enabled" }}
{{- end }}
{{- if .Values.redirectBlobs.enabled }}
{{- $ttl := include "ocicache.seconds" .Values.redirectBlobs.ttl }}
{{- if or (not $ttl) (lt (atoi $ttl) 10) (gt (atoi $ttl) 3600) }}
{{- fail (printf "redirectBlobs.ttl %q: a duration from 10s to 1h, such as 5m" (toString .Values.redirectBlobs.ttl)) }}
{{- end }}
{{- end }}
{{- if not (has (toString .Values.peers.enabled) (list "auto" "true" "false")) }}
{{- fail (printf "peers.enabled must be auto, true or false, not %q" (toString .Values.peers.enabled)) }}
{{- end }}
{{- if and (include "ocicache.peers" .) (not .Values.s3.enabled) }}
{{- fail "peers.enabled: peers share one bucket, so they need s3.enabled" }}
{{- end }}
{{- if not (has .Values.podAntiAffinity (list "preferred" "")) }}
{{- fail (printf "podAntiAffinity must be preferred or \"\", not %q" .Values.podAntiAffinity) }}
{{- end }}
{{- if and .Values.hostNetwork (ne .Values.kind "DaemonSet") }}
{{- fail "hostNetwork is for kind=DaemonSet (one cache per node on localhost)" }}
{{- end }}
{{- if and .Values.htpasswd.enabled (not .Values.htpasswd.existingSecret) }}
{{- fail "htpasswd.enabled needs htpasswd.existingSecret (a Secret with a bcrypt htpasswd file)" }}
{{- end }}
{{- if and .Values.htpasswd.metricsAuth (not .Values.htpasswd.enabled) }}
{{- fail "htpasswd.metricsAuth protects /metrics with the htpasswd file: it needs htpasswd.enabled" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- if and (or .Values.nodeConfigurator.ca .Values.nodeConfigurator.skipVerify) (not .Values.tls.enabled) (not (hasPrefix "https://" .Values.nodeConfigurator.endpoint)) }}
{{- fail "nodeConfigurator.ca and skipVerify are for an https:// mirror: set tls.enabled (or an https:// nodeConfigurator.endpoint)" }}
{{- end }}
{{- range $name, $settings := .Values.config.registries }}
{{- if and (hasKey $.Values.config.upstreams $name) (hasKey ($settings | default dict) "endpoints") }}
{{- fail (printf "registry %s has endpoints in both config.upstreams and config.registries: keep one" $name) }}
{{- end }}
{{- end }}
{{- $delay := include "ocicache.seconds" .Values.config.shutdownDelay }}
{{- $timeout := include "ocicache.seconds" .Values.config.shutdownTimeout }}
{{- if and $delay $timeout }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (atoi $delay) (atoi $timeout)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than config.shutdownDelay + config.shutdownTimeout (%s + %s = %ds), or Kubernetes kills ocicache before in-flight pulls finish" (int .Values.terminationGracePeriodSeconds) (toString .Values.config.shutdownDelay) (toString .Values.config.shutdownTimeout) (add (atoi $delay) (atoi $timeout))) }}
{{- end }}
{{- end }}
{{- $_ := include "ocicache.maxSize" . }}
{{- end }}
