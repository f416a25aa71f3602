{{/* Names and labels. */}}
{{- define "bastion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bastion.fullname" -}}
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

{{- define "bastion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bastion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bastion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bastion.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "bastion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bastion.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether the chart makes a Secret, and what goes in it. */}}
{{- define "bastion.secretData" -}}
{{- if and .Values.database.url (not .Values.database.existingSecret) }}
database-url: {{ .Values.database.url | b64enc | quote }}
{{- end }}
{{- if and .Values.redis.url (not .Values.redis.existingSecret) }}
redis-url: {{ .Values.redis.url | b64enc | quote }}
{{- end }}
{{- range $name, $value := .Values.secretEnv }}
{{ $name }}: {{ $value | toString | b64enc | quote }}
{{- end }}
{{- end }}

{{- define "bastion.hasDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{- define "bastion.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/*
Seconds Kubernetes waits between SIGTERM and SIGKILL: the drain delay (/ready is 503, the pod
still serves), the drain timeout (requests in flight finish), and a margin for the exit.
*/}}
{{- define "bastion.terminationGracePeriodSeconds" -}}
{{- add (ceil (addf .Values.drain.delay .Values.drain.timeout) | int) (int .Values.drain.margin) }}
{{- end }}

{{/*
bastion.yaml: `config`, with the settings the chart owns (the port the probes use, the
writable state directory, the drain the grace period is computed from, the Secret-backed
URLs) put over it.
*/}}
{{- define "bastion.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $server := dict "host" "0.0.0.0" "port" 8080 "state_dir" "/var/lib/bastion" "drain_delay" .Values.drain.delay "drain_timeout" .Values.drain.timeout }}
{{- if not (kindIs "invalid" .Values.workers) }}
{{- $_ := set $server "workers" .Values.workers }}
{{- end }}
{{- $_ := set $config "server" (merge $server (default dict $config.server)) }}
{{- $store := default dict $config.store }}
{{- if include "bastion.hasDatabase" . }}
{{- $_ := set $store "url" (dict "env" "DATABASE_URL") }}
{{- else if not (hasKey $store "enabled") }}
{{- $_ := set $store "enabled" false }}
{{- else if $store.enabled }}
{{- fail "config.store.enabled is true but no database is given: set database.url or database.existingSecret (a SQLite store in a pod's emptyDir is lost with the pod)" }}
{{- end }}
{{- $_ := set $config "store" $store }}
{{- if include "bastion.hasRedis" . }}
{{- $limits := default dict $config.limits }}
{{- $redis := default dict $limits.redis }}
{{- $_ := set $redis "url" (dict "env" "REDIS_URL") }}
{{- $_ := set $limits "redis" $redis }}
{{- $_ := set $limits "backend" "redis" }}
{{- $_ := set $config "limits" $limits }}
{{- end }}
{{- if .Values.metrics.enabled }}
{{- $metrics := default dict $config.metrics }}
{{- $_ := set $metrics "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port)) }}
{{- $_ := set $config "metrics" $metrics }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The container's environment: Secret-backed URLs and secretEnv, then extraEnv. */}}
{{- define "bastion.env" -}}
{{- $secretName := include "bastion.fullname" . }}
{{- if include "bastion.hasDatabase" . }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | default $secretName }}
      key: {{ ternary .Values.database.existingSecretKey "database-url" (ne .Values.database.existingSecret "") }}
{{- end }}
{{- if include "bastion.hasRedis" . }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | default $secretName }}
      key: {{ ternary .Values.redis.existingSecretKey "redis-url" (ne .Values.redis.existingSecret "") }}
{{- end }}
{{- range $name, $_ := .Values.secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $name }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
