{{/* Names ------------------------------------------------------------------------------------------ */}}

{{- define "medlora.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "medlora.fullname" -}}
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

{{/* The engine's name stays under 63 characters with its suffix (it is also a DNS label). */}}
{{- define "medlora.engineName" -}}
{{- printf "%s-engine" (include "medlora.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "medlora.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "medlora.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "medlora.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels: call with (dict "ctx" $ "component" "gateway") --------------------------------------------- */}}

{{- define "medlora.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medlora.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "medlora.labels" -}}
helm.sh/chart: {{ include "medlora.chart" .ctx }}
{{ include "medlora.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: medlora
{{- end }}

{{/* Images --------------------------------------------------------------------------------------------- */}}

{{- define "medlora.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "medlora.engineImage" -}}
{{- $repo := default .Values.image.repository .Values.engine.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.engine.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{- define "medlora.initImage" -}}
{{- $repo := default .Values.image.repository .Values.models.initContainer.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.models.initContainer.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Paths ---------------------------------------------------------------------------------------------- */}}

{{- define "medlora.modelPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.models.mountPath) .Values.models.modelDir }}
{{- end }}

{{- define "medlora.adaptersPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.models.mountPath) .Values.models.adaptersDir }}
{{- end }}

{{- define "medlora.modelsClaim" -}}
{{- if .Values.models.existingClaim }}
{{- .Values.models.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "medlora.fullname" .) }}
{{- end }}
{{- end }}

{{- define "medlora.engineSecretName" -}}
{{- default (printf "%s-engine-key" (include "medlora.fullname" .)) .Values.engine.apiKeySecret.name }}
{{- end }}

{{- define "medlora.authSecretName" -}}
{{- default (printf "%s-auth" (include "medlora.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "medlora.engineUrl" -}}
{{- printf "http://%s:8000" (include "medlora.engineName" .) }}
{{- end }}

{{/* terminationGracePeriodSeconds of the gateway: above preStop sleep + MEDLORA_SHUTDOWN_GRACE_S. */}}
{{- define "medlora.gatewayGrace" -}}
{{- $g := .Values.gateway }}
{{- $min := add $g.preStopSleepSeconds $g.shutdownGraceSeconds }}
{{- if $g.terminationGracePeriodSeconds }}
{{- if le (int $g.terminationGracePeriodSeconds) (int $min) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%v) must exceed gateway.preStopSleepSeconds + gateway.shutdownGraceSeconds (%v): the kubelet would kill requests still draining" $g.terminationGracePeriodSeconds $min) }}
{{- end }}
{{- $g.terminationGracePeriodSeconds }}
{{- else }}
{{- add $min 15 }}
{{- end }}
{{- end }}

{{/* Checks that values.schema.json cannot express, with messages naming the keys. ---------------------- */}}

{{- define "medlora.validate" -}}
{{- $v := .Values }}
{{- if $v.auth.enabled }}
{{- if and (not $v.auth.existingSecret) (not $v.auth.apiKeys) }}
{{- fail "auth.enabled is true but no API keys are given: set auth.existingSecret (a Secret with keys `api-keys` and `admin-keys`, lines of `<name> <sha256 hex>`) or auth.apiKeys (and auth.adminKeys) as [{name, sha256}] (hash a key with `medlora hash-key` or `printf %s \"$KEY\" | sha256sum`); auth.enabled=false only for a trusted test namespace" }}
{{- end }}
{{- if and $v.auth.existingSecret (or $v.auth.apiKeys $v.auth.adminKeys) }}
{{- fail "auth.existingSecret and auth.apiKeys/auth.adminKeys are exclusive: keep the keys in one place" }}
{{- end }}
{{- end }}
{{- $sources := 0 }}
{{- if $v.models.existingClaim }}{{ $sources = add1 $sources }}{{ end }}
{{- if $v.models.pvc.create }}{{ $sources = add1 $sources }}{{ end }}
{{- if $v.models.initContainer.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if ne (int $sources) 1 }}
{{- fail (printf "models: choose exactly one source of the model and adapters, found %d: models.existingClaim (an existing PVC), models.pvc.create=true (set models.existingClaim=\"\"), or models.initContainer.enabled=true (set models.existingClaim=\"\")" (int $sources)) }}
{{- end }}
{{- if and $v.models.initContainer.enabled (not $v.models.initContainer.command) }}
{{- fail "models.initContainer.enabled needs models.initContainer.command (what copies the model and adapters into models.mountPath)" }}
{{- end }}
{{- if $v.batch.persistence.enabled }}
{{- if or (gt (int $v.gateway.replicas) 1) $v.autoscaling.enabled }}
{{- fail "batch.persistence.enabled needs gateway.replicas=1 and autoscaling.enabled=false: the batch store is one SQLite database that a single gateway pod owns (several pods would run the same jobs)" }}
{{- end }}
{{- end }}
{{- if le (int $v.engine.terminationGracePeriodSeconds) (int $v.engine.preStopSleepSeconds) }}
{{- fail (printf "engine.terminationGracePeriodSeconds (%v) must exceed engine.preStopSleepSeconds (%v)" $v.engine.terminationGracePeriodSeconds $v.engine.preStopSleepSeconds) }}
{{- end }}
{{- if and $v.autoscaling.engine.enabled (ne $v.mode "split") }}
{{- fail "autoscaling.engine.enabled needs mode=split (in combined mode the engine runs in the gateway pods: use autoscaling.enabled)" }}
{{- end }}
{{- if and $v.tasks.existingConfigMap $v.tasks.manifests }}
{{- fail "tasks.existingConfigMap and tasks.manifests are exclusive" }}
{{- end }}
{{- if and $v.tasks.existingSchemasConfigMap $v.tasks.schemas }}
{{- fail "tasks.existingSchemasConfigMap and tasks.schemas are exclusive" }}
{{- end }}
{{- end }}

{{/* Pod pieces shared by gateway and engine ---------------------------------------------------------- */}}

{{/* Probe: (dict "path" "/readyz" "probe" .Values.gateway.readinessProbe) */}}
{{- define "medlora.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{- toYaml .probe | nindent 0 }}
{{- end }}

{{- define "medlora.modelsVolume" -}}
- name: models
{{- if .Values.models.initContainer.enabled }}
  emptyDir:
    sizeLimit: {{ .Values.models.initContainer.sizeLimit }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "medlora.modelsClaim" . }}
    readOnly: true
{{- end }}
{{- end }}

{{- define "medlora.initContainers" -}}
{{- if .Values.models.initContainer.enabled }}
{{- $ic := .Values.models.initContainer }}
initContainers:
  - name: fetch-models
    image: {{ include "medlora.initImage" . }}
    imagePullPolicy: {{ $ic.image.pullPolicy }}
    command: {{ toYaml $ic.command | nindent 6 }}
    {{- with $ic.args }}
    args: {{ toYaml . | nindent 6 }}
    {{- end }}
    env:
      - {name: MODELS_DIR, value: {{ .Values.models.mountPath | quote }}}
      - {name: MODEL_PATH, value: {{ include "medlora.modelPath" . | quote }}}
      - {name: ADAPTERS_PATH, value: {{ include "medlora.adaptersPath" . | quote }}}
      - {name: HOME, value: /tmp}
      {{- with $ic.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    securityContext: {{ toYaml .Values.securityContext | nindent 6 }}
    {{- with $ic.resources }}
    resources: {{ toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - {name: models, mountPath: {{ .Values.models.mountPath }}}
      - {name: tmp, mountPath: /tmp}
      {{- with $ic.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
{{- end }}
{{- end }}

{{/* Environment that keeps every process offline and its caches on the writable volume. */}}
{{- define "medlora.offlineEnv" -}}
- {name: HOME, value: /home/medlora}
- {name: XDG_CACHE_HOME, value: /home/medlora/.cache}
- {name: TRITON_CACHE_DIR, value: /home/medlora/.cache/triton}
- {name: CUDA_CACHE_PATH, value: /home/medlora/.cache/nv}
- {name: HF_HUB_OFFLINE, value: "1"}
- {name: TRANSFORMERS_OFFLINE, value: "1"}
- {name: VLLM_NO_USAGE_STATS, value: "1"}
- {name: DO_NOT_TRACK, value: "1"}
{{- end }}

{{/* PromQL label matchers for the alert rules. */}}
{{- define "medlora.gatewaySelector" -}}
{{- default (printf "namespace=%q, job=%q" .Release.Namespace (include "medlora.fullname" .)) .Values.metrics.prometheusRule.gatewaySelector }}
{{- end }}

{{- define "medlora.vllmSelector" -}}
{{- if eq .Values.mode "split" }}
{{- default (printf "namespace=%q, job=%q" .Release.Namespace (include "medlora.engineName" .)) .Values.metrics.prometheusRule.engineSelector }}
{{- else }}
{{- include "medlora.gatewaySelector" . }}
{{- end }}
{{- end }}

{{/* vLLM's speculative_config for the engine pods (GPU: ngram_gpu), as app/engine/speculative.py builds it. */}}
{{- define "medlora.speculativeConfig" -}}
{{- $v := .Values.vllm -}}
{{- $c := dict "method" "ngram_gpu" "num_speculative_tokens" (int $v.speculativeTokens) "prompt_lookup_min" (int $v.speculativeLookupMin) "prompt_lookup_max" (int $v.speculativeLookupMax) -}}
{{- with $v.speculativeTokensByBatchSize -}}
{{- $ranges := list -}}
{{- range splitList "," . -}}
{{- $parts := splitList ":" . -}}
{{- $sizes := splitList "-" (first $parts) -}}
{{- $ranges = append $ranges (list (atoi (first $sizes)) (atoi (last $sizes)) (atoi (last $parts))) -}}
{{- end -}}
{{- $_ := set $c "num_speculative_tokens_per_batch_size" $ranges -}}
{{- end -}}
{{- toJson $c -}}
{{- end -}}
