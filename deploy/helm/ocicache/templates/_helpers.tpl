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

{{/* True (non-empty) when the chart makes its own PersistentVolumeClaim. */}}
{{- define "ocicache.makesClaim" -}}
{{- if and (eq .Values.persistence.type "pvc") (not .Values.s3.enabled) (not .Values.persistence.existingClaim) }}true{{ end }}
{{- end }}

{{/* The mirror URL containerd is given in hosts.toml. */}}
{{- define "ocicache.mirrorEndpoint" -}}
{{- if .Values.nodeConfigurator.endpoint }}
{{- .Values.nodeConfigurator.endpoint }}
{{- else if .Values.hostNetwork }}
{{- printf "http://localhost:%d" (.Values.config.port | int) }}
{{- else }}
{{- printf "http://localhost:%d" (required "service.nodePort is needed for the node configurator's mirror URL (or set nodeConfigurator.endpoint)" .Values.service.nodePort | int) }}
{{- end }}
{{- end }}

{{/* /etc/containerd/certs.d/_default/hosts.toml as the node configurator writes it. */}}
{{- define "ocicache.hostsToml" -}}
# ocicache ({{ .Release.Namespace }}/{{ include "ocicache.fullname" . }}) as the mirror of every registry.
# containerd (1.6.17+) sends every registry's pulls here with ?ns=<registry>, and falls back to the
# registry itself when the mirror is unreachable or answers an error.
[host.{{ include "ocicache.mirrorEndpoint" . | quote }}]
  capabilities = ["pull", "resolve"]
{{- end }}

{{/* Refuses combinations that cannot work, with a message saying what to change. */}}
{{- define "ocicache.validate" -}}
{{- if not (has .Values.kind (list "Deployment" "DaemonSet")) }}
{{- fail (printf "kind must be Deployment or DaemonSet, not %q" .Values.kind) }}
{{- end }}
{{- if not (has .Values.persistence.type (list "pvc" "emptyDir" "hostPath")) }}
{{- fail (printf "persistence.type must be pvc, emptyDir or hostPath, not %q" .Values.persistence.type) }}
{{- end }}
{{- if and (eq .Values.kind "DaemonSet") (eq .Values.persistence.type "pvc") (not .Values.s3.enabled) }}
{{- fail "kind=DaemonSet cannot share one PersistentVolumeClaim between nodes: set persistence.type to hostPath or emptyDir" }}
{{- end }}
{{- if and (eq .Values.kind "Deployment") (eq .Values.persistence.type "pvc") (not .Values.s3.enabled) (gt (int .Values.replicaCount) 1) (not (has "ReadWriteMany" .Values.persistence.accessModes)) }}
{{- fail "replicaCount > 1 with one ReadWriteOnce claim: use kind=DaemonSet, persistence.type=emptyDir, or a ReadWriteMany claim" }}
{{- end }}
{{- if and .Values.hostNetwork (ne .Values.kind "DaemonSet") }}
{{- fail "hostNetwork is for kind=DaemonSet (one cache per node on localhost)" }}
{{- end }}
{{- if and .Values.s3.enabled (not .Values.s3.url) }}
{{- fail "s3.enabled needs s3.url (s3://bucket/prefix)" }}
{{- end }}
{{- if and .Values.htpasswd.enabled (not .Values.htpasswd.existingSecret) }}
{{- fail "htpasswd.enabled needs htpasswd.existingSecret (a Secret with a bcrypt htpasswd file)" }}
{{- end }}
{{- end }}
