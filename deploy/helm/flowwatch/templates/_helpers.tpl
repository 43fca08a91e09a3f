{{/*
Shared template helpers. Other templates (including rbac.yaml) rely on:
  flowwatch.name, flowwatch.fullname, flowwatch.labels, flowwatch.selectorLabels,
  flowwatch.serviceAccountName, flowwatch.image
*/}}

{{/* The chart name, overridable with nameOverride. */}}
{{- define "flowwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name (release-scoped), at most 63 characters (DNS label).
If the release name already contains the chart name it is not repeated.
*/}}
{{- define "flowwatch.fullname" -}}
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

{{/* chart label value: name-version */}}
{{- define "flowwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels for every object (use with nindent). */}}
{{- define "flowwatch.labels" -}}
helm.sh/chart: {{ include "flowwatch.chart" . }}
{{ include "flowwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flowwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades (never add version labels here). */}}
{{- define "flowwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the agent runs as. */}}
{{- define "flowwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The agent image reference: digest wins over tag; tag defaults to the chart's appVersion. */}}
{{- define "flowwatch.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Validates metrics.* and says what is wrong (the agent would otherwise crash-loop or the
scrapes fail silently).
*/}}
{{- define "flowwatch.metricsChecks" -}}
{{- if not (has .Values.metrics.auth.mode (list "none" "kubernetes")) }}
{{- fail (printf "metrics.auth.mode must be \"none\" or \"kubernetes\", not %q" .Values.metrics.auth.mode) }}
{{- end }}
{{- if and .Values.metrics.tls.enabled (not .Values.metrics.tls.secretName) }}
{{- fail "metrics.tls.enabled needs metrics.tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- end }}

{{/*
How Prometheus scrapes the agents (ServiceMonitor/PodMonitor endpoint fields): https with
metrics.tls.scrapeTlsConfig when TLS is on; a bearer token when metrics.auth.mode is
kubernetes. Call with (dict "root" $ "kind" "ServiceMonitor"|"PodMonitor").
*/}}
{{- define "flowwatch.scrapeSecurity" -}}
{{- $v := .root.Values.metrics }}
{{- if $v.tls.enabled }}
scheme: https
{{- with $v.tls.scrapeTlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- if eq $v.auth.mode "kubernetes" }}
{{- if $v.auth.scrapeTokenSecret.name }}
authorization:
  type: Bearer
  credentials:
    name: {{ $v.auth.scrapeTokenSecret.name }}
    key: {{ default "token" $v.auth.scrapeTokenSecret.key }}
{{- else if eq .kind "ServiceMonitor" }}
bearerTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
{{- else }}
{{- fail "podMonitor with metrics.auth.mode=kubernetes needs metrics.auth.scrapeTokenSecret.name (a PodMonitor cannot use Prometheus's own token file)" }}
{{- end }}
{{- end }}
{{- end }}
