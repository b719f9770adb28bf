{{/*
Names, labels and the pieces every pdserve pod shares. Templates that describe one component
take a dict: (dict "ctx" $ "component" "prefill").
*/}}

{{/* Chart name, overridable. */}}
{{- define "pdserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name. Truncated to 50 characters so "<prefix>-prefill-engine" and
the like still fit the 63-character limit of names and labels.
*/}}
{{- define "pdserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "pdserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource of the release. */}}
{{- define "pdserve.labels" -}}
helm.sh/chart: {{ include "pdserve.chart" . }}
{{ include "pdserve.selectorLabels" . }}
app.kubernetes.io/part-of: pdserve
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that identify the release's pods. */}}
{{- define "pdserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: router, prefill, decode, colocated or redis. */}}
{{- define "pdserve.componentLabels" -}}
{{ include "pdserve.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector of one component's pods. */}}
{{- define "pdserve.componentSelectorLabels" -}}
{{ include "pdserve.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* ServiceAccount the pods run as. */}}
{{- define "pdserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pdserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The pdserve image; the default tag follows the device the workers run on. */}}
{{- define "pdserve.image" -}}
{{- $flavor := ternary "cuda" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $flavor) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The Secret the chart creates (generated token, Redis password, inline credentials). */}}
{{- define "pdserve.secretName" -}}
{{- include "pdserve.fullname" . }}
{{- end }}

{{/* The Secret holding the internal token and API keys. */}}
{{- define "pdserve.authSecretName" -}}
{{- default (include "pdserve.secretName" .) .Values.auth.existingSecret }}
{{- end }}

{{/* The ConfigMap of shared engine settings. */}}
{{- define "pdserve.engineConfigName" -}}
{{- printf "%s-engine" (include "pdserve.fullname" .) }}
{{- end }}

{{/* Where Redis lives inside the release. */}}
{{- define "pdserve.redisName" -}}
{{- printf "%s-redis" (include "pdserve.fullname" .) }}
{{- end }}

{{/* Where the model directory sits in the containers. */}}
{{- define "pdserve.modelMountPath" -}}
/models
{{- end }}

{{/* The --model value: the built-in name or a directory under /models. */}}
{{- define "pdserve.modelArg" -}}
{{- $m := .Values.model }}
{{- if eq $m.source "huggingface" }}
{{- printf "%s/%s" (include "pdserve.modelMountPath" .) $m.name }}
{{- else if eq $m.source "pvc" }}
{{- printf "%s/%s" (include "pdserve.modelMountPath" .) (trimPrefix "/" $m.pvc.path) }}
{{- else }}
{{- "smollm2" }}
{{- end }}
{{- end }}

{{/* The model name clients use. */}}
{{- define "pdserve.servedModelName" -}}
{{- $m := .Values.model }}
{{- if $m.servedModelName }}
{{- $m.servedModelName }}
{{- else if eq $m.source "huggingface" }}
{{- $m.name }}
{{- else if eq $m.source "pvc" }}
{{- trimPrefix "/" $m.pvc.path }}
{{- else }}
{{- "smollm2" }}
{{- end }}
{{- end }}

{{/*
Environment every pdserve container shares: its address, a writable HOME, the internal token
and the registry URL. Secrets come only through secretKeyRef; the Redis URL names the password
as $(REDIS_PASSWORD), which the kubelet fills in when the container starts.
*/}}
{{- define "pdserve.commonEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: HOME
  value: /tmp
- name: PDSERVE_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "pdserve.authSecretName" . }}
      key: internal-token
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "pdserve.secretName" . }}
      key: redis-password
- name: PDSERVE_REGISTRY
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "pdserve.redisName" .) | quote }}
{{- else }}
- name: PDSERVE_REGISTRY
  valueFrom:
    secretKeyRef:
      {{- if .Values.redis.external.existingSecret }}
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
      {{- else }}
      name: {{ include "pdserve.secretName" . }}
      key: registry-url
      {{- end }}
{{- end }}
{{- end }}

{{/* Where the Hugging Face token comes from, or nothing for public repos. */}}
{{- define "pdserve.hfTokenEnv" -}}
{{- $hf := .Values.model.huggingface }}
{{- if or $hf.existingSecret $hf.token }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      {{- if $hf.existingSecret }}
      name: {{ $hf.existingSecret }}
      key: {{ $hf.existingSecretKey }}
      {{- else }}
      name: {{ include "pdserve.secretName" . }}
      key: hf-token
      {{- end }}
{{- end }}
{{- end }}

{{/*
Init container that downloads the Hugging Face checkpoint into the model cache. Takes
(dict "ctx" $ "include" LIST): the router passes its tokenizer-only patterns, workers none.
*/}}
{{- define "pdserve.downloadInitContainer" -}}
{{- $ctx := .ctx }}
{{- $m := $ctx.Values.model }}
{{- if eq $m.source "huggingface" }}
- name: download-model
  image: {{ include "pdserve.image" $ctx }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  command:
    - hf
    - download
    - {{ $m.name | quote }}
    - --local-dir
    - {{ include "pdserve.modelArg" $ctx | quote }}
    {{- with $m.revision }}
    - --revision
    - {{ . | quote }}
    {{- end }}
    {{- range .include }}
    - --include
    - {{ . | quote }}
    {{- end }}
  env:
    - name: HOME
      value: /tmp
    - name: HF_HOME
      value: {{ printf "%s/.hf-home" (include "pdserve.modelMountPath" $ctx) }}
    - name: HF_HUB_DISABLE_TELEMETRY
      value: "1"
    {{- with include "pdserve.hfTokenEnv" $ctx }}{{ . | trim | nindent 4 }}{{ end }}
  securityContext:
    {{- toYaml $ctx.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $m.huggingface.downloadResources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: models
      mountPath: {{ include "pdserve.modelMountPath" $ctx }}
{{- end }}
{{- end }}

{{/* The model volume: the download cache, the model's claim, or nothing for builtin. */}}
{{- define "pdserve.modelVolume" -}}
{{- $m := .Values.model }}
{{- if eq $m.source "huggingface" }}
- name: models
  {{- if $m.cache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ $m.cache.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $m.cache.sizeLimit }}
  {{- end }}
{{- else if eq $m.source "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ $m.pvc.claimName }}
    readOnly: true
{{- end }}
{{- end }}

{{/* Mount of the model volume in the serving containers (read-only: they never write it). */}}
{{- define "pdserve.modelVolumeMount" -}}
{{- if ne .Values.model.source "builtin" }}
- name: models
  mountPath: {{ include "pdserve.modelMountPath" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* An HTTP GET probe on a named port; takes (dict "path" P "port" NAME "settings" MAP). */}}
{{- define "pdserve.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{ toYaml .settings }}
{{- end }}

{{/*
The worker pools that run (replicas above 0), as a JSON list in the order prefill, decode,
colocated; read it with `include "pdserve.workerPools" . | fromJsonArray`. Fails on pools the
router cannot serve with: half of the prefill/decode pair, or no worker at all. Colocated pools
may run beside the pair; the router then sends every request to the pair.
*/}}
{{- define "pdserve.workerPools" -}}
{{- $replicas := dict }}
{{- range $role := list "prefill" "decode" "colocated" }}
{{- $_ := set $replicas $role (int (index $.Values $role).replicas) }}
{{- end }}
{{- range $pair := list (list "prefill" "decode") (list "decode" "prefill") }}
{{- $running := index $pair 0 }}
{{- $missing := index $pair 1 }}
{{- if and (gt (get $replicas $running) 0) (eq (get $replicas $missing) 0) }}
{{- fail (printf "prefill and decode run as a pair: %s.replicas is %d but %s.replicas is 0, so no worker would take the other half of each request. Set %s.replicas to 1 or more, or set %s.replicas to 0 and run colocated.replicas workers, which prefill and decode alike" $running (get $replicas $running) $missing $missing $running) }}
{{- end }}
{{- end }}
{{- if eq (add (get $replicas "prefill") (get $replicas "decode") (get $replicas "colocated")) 0 }}
{{- fail "no workers: prefill.replicas, decode.replicas and colocated.replicas are all 0. Set colocated.replicas to 1 or more (workers that prefill and decode), or prefill.replicas and decode.replicas both to 1 or more (disaggregated)" }}
{{- end }}
{{- $pools := list }}
{{- range $role := list "prefill" "decode" "colocated" }}
{{- if gt (get $replicas $role) 0 }}
{{- $pools = append $pools $role }}
{{- end }}
{{- end }}
{{- toJson $pools }}
{{- end }}

{{/*
Pod affinity of a worker pool; takes (dict "ctx" $ "role" "prefill"|"decode"|"colocated").
Every placement spreads a pool over nodes (soft anti-affinity to its own pods). Low affinity
also makes every decode pod share a node with a prefill pod, so KV moves over NVLink; it is a
matter of the pair only, so a colocated pool always spreads as under high affinity.
*/}}
{{- define "pdserve.workerAffinity" -}}
{{- $ctx := .ctx }}
{{- $p := $ctx.Values.placement }}
{{- $low := and (eq $p.affinity "low") (ne .role "colocated") }}
{{- $own := include "pdserve.componentSelectorLabels" (dict "ctx" $ctx "component" .role) }}
{{- $prefill := include "pdserve.componentSelectorLabels" (dict "ctx" $ctx "component" "prefill") }}
{{- if and $low (eq .role "decode") }}
podAffinity:
  {{- if eq $p.lowAffinityRule "required" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - labelSelector:
        matchLabels:
          {{- $prefill | nindent 10 }}
      topologyKey: {{ $p.topologyKey }}
  {{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        labelSelector:
          matchLabels:
            {{- $prefill | nindent 12 }}
        topologyKey: {{ $p.topologyKey }}
  {{- end }}
{{- end }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: {{ ternary 50 100 $low }}
      podAffinityTerm:
        labelSelector:
          matchLabels:
            {{- $own | nindent 12 }}
        topologyKey: {{ $p.topologyKey }}
{{- end }}
