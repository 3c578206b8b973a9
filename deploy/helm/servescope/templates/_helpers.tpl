{{/* Names, labels and the per-component configuration. */}}

{{- define "servescope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name when it already contains the chart's. */}}
{{- define "servescope.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "servescope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries (the Kubernetes recommended set plus helm.sh/chart). */}}
{{- define "servescope.commonLabels" -}}
helm.sh/chart: {{ include "servescope.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "servescope.name" . }}
{{- end -}}

{{/* Labels of objects that belong to the release as a whole (ServiceMonitor, rules, ...). */}}
{{- define "servescope.labels" -}}
{{ include "servescope.commonLabels" . }}
app.kubernetes.io/name: {{ include "servescope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The name of component (list $ "preprocess"): Deployment, Service and friends. */}}
{{- define "servescope.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "servescope.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component (list $ name): immutable on a Deployment, keep them few. */}}
{{- define "servescope.selectorLabels" -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
{{- end -}}

{{/* All labels of a component (list $ name). */}}
{{- define "servescope.componentLabels" -}}
{{ include "servescope.commonLabels" (index . 0) }}
{{ include "servescope.selectorLabels" . }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "servescope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "servescope.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Deep merge (list dst src) into dst: maps merge key by key, anything else in src replaces dst,
including false, 0 and "" (sprig's merge functions treat those as "unset", so a component's
`autoscaling.enabled: false` could not override the default's true).
*/}}
{{- define "servescope.deepMerge" -}}
{{- $dst := index . 0 -}}
{{- range $key, $value := index . 1 -}}
{{- if and (kindIs "map" $value) (kindIs "map" (index $dst $key)) -}}
{{- include "servescope.deepMerge" (list (index $dst $key) $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Every enabled entry of `components:` as YAML, name: its own values. Templates range over this,
so a component switched off (the alert responder, by default) renders nothing.
*/}}
{{- define "servescope.components" -}}
{{- $all := dict -}}
{{- range $name, $raw := .Values.components -}}
{{- if $raw.enabled -}}
{{- $_ := set $all $name (deepCopy $raw) -}}
{{- end -}}
{{- end -}}
{{- toYaml $all -}}
{{- end -}}

{{/* A component's effective configuration (list $ name raw) as YAML: `default` under its own
keys; raw is the component's entry of servescope.components. */}}
{{- define "servescope.component" -}}
{{- $root := index . 0 -}}
{{- $c := deepCopy $root.Values.default -}}
{{- include "servescope.deepMerge" (list $c (deepCopy (index . 2))) -}}
{{- toYaml $c -}}
{{- end -}}

{{/* The image reference of a component's effective configuration (list $ config). */}}
{{- define "servescope.image" -}}
{{- $root := index . 0 -}}
{{- $img := (index . 1).image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $repo }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else if $img.requireDigest -}}
{{- fail (printf "image %s has no digest, and image.requireDigest is on: set its component's image.digest to the sha256 digest your registry gave the pushed image (skaffold build prints it)" $repo) -}}
{{- else -}}
{{- printf "%s:%s" $repo (default $root.Chart.AppVersion $img.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: preStop + drain + graceful timeout + 5 s, unless set. */}}
{{- define "servescope.terminationGracePeriod" -}}
{{- $s := .Values.shutdown -}}
{{- $needed := add (int $s.preStopSleepSeconds) (int $s.drainSeconds) (int $s.gracefulTimeoutSeconds) -}}
{{- if kindIs "invalid" $s.terminationGracePeriodSeconds -}}
{{- add $needed 5 -}}
{{- else if lt (int $s.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) is shorter than preStopSleepSeconds + drainSeconds + gracefulTimeoutSeconds (%d): Kubernetes would kill pods with requests in flight" (int $s.terminationGracePeriodSeconds) (int $needed)) -}}
{{- else -}}
{{- $s.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the Prometheus Operator's objects may be rendered: the cluster serves
monitoring.coreos.com/v1 (kube-prometheus-stack's CRDs, from `servescope stack install`), or
monitoring.assumeCRDs says so. Empty otherwise: applying a ServiceMonitor without its CRD fails
the whole release with "no matches for kind ServiceMonitor".
*/}}
{{- define "servescope.operatorCRDs" -}}
{{- if or .Values.monitoring.assumeCRDs (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}
true
{{- end -}}
{{- end -}}
