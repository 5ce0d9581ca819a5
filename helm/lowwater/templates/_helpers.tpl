{{/*
Helpers of the lowwater chart.

The templates documented as PUBLIC below are meant for other charts too, to put the lowwater
sidecar into their own pod spec. Each takes a context with `Values` (this chart's values: `.`
inside this chart, or `(dict "Values" .Values.lowwater "Release" .Release)` in a chart that
has this one as its `lowwater` dependency) and `Release`. See docs/kubernetes.md.
*/}}

{{- define "lowwater.name" -}}
{{- default "lowwater" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name; computed without .Chart, so that it is the same from a
parent chart. */}}
{{- define "lowwater.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "lowwater.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lowwater.configMapName" -}}
{{- printf "%s-config" (include "lowwater.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "lowwater.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lowwater.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lowwater.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lowwater.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* repository@digest, or repository:tag. Argument: an image value. */}}
{{- define "lowwater.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (required "lowwater: an image needs a tag or a digest" .tag) }}
{{- end }}
{{- end }}

{{/*
A duration ("30s", "500ms", "1m30s", "2.5s") in seconds, as a decimal string: lowwater's own
syntax (units h, m, s, ms, us). Use as `float64 (include "lowwater.seconds" "30s")`.
*/}}
{{- define "lowwater.seconds" -}}
{{- $text := toString . }}
{{- if not (regexMatch "^(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ms|us|h|m|s))+$" $text) }}
{{- fail (printf "lowwater: invalid duration %q (use e.g. 500ms, 30s, 5m, 1h30m)" $text) }}
{{- end }}
{{- $total := 0.0 }}
{{- range $term := regexFindAll "([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ms|us|h|m|s)" $text -1 }}
{{- $number := float64 (regexFind "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)" $term) }}
{{- $unit := regexFind "(ms|us|h|m|s)$" $term }}
{{- $scale := get (dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001) $unit }}
{{- $total = addf $total (mulf $number $scale) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* The worker API address: the Unix socket, or loopback. */}}
{{- define "lowwater.target" -}}
{{- $s := .Values.sidecar }}
{{- if eq $s.transport "unix" }}
{{- printf "unix:%s/%s" (trimSuffix "/" $s.socketDir) $s.socketName }}
{{- else }}
{{- printf "127.0.0.1:%d" (int $s.tcpPort) }}
{{- end }}
{{- end }}

{{/* LOWWATER_KAFKA__ + a librdkafka property, with "_" for "." and "__" for "_". */}}
{{- define "lowwater.kafkaEnvName" -}}
{{- printf "LOWWATER_KAFKA__%s" (. | replace "_" "__" | replace "." "_" | upper) }}
{{- end }}

{{/* --- TOML --------------------------------------------------------------------------------- */}}

{{- define "lowwater.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* A TOML value. Helm reads every YAML number as a float: integral ones are written as
integers, as lowwater and librdkafka expect. JSON string escapes are valid TOML ones. */}}
{{- define "lowwater.toml.value" -}}
{{- $kind := kindOf . }}
{{- if eq $kind "string" }}{{ toJson . }}
{{- else if eq $kind "bool" }}{{ . }}
{{- else if has $kind (list "float64" "float32" "int" "int64" "int32" "uint64") }}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if eq $kind "slice" }}[{{ range $i, $item := . }}{{ if $i }}, {{ end }}{{ include "lowwater.toml.value" $item }}{{ end }}]
{{- else }}{{ fail (printf "lowwater: cannot write %v (%s) into the TOML file" . $kind) }}
{{- end }}
{{- end }}

{{/* The sidecar's lowwater.toml. */}}
{{- define "lowwater.configToml" -}}
{{- $s := .Values.sidecar }}
{{- $config := $s.config -}}
# lowwater.toml, rendered by the lowwater Helm chart from sidecar.config (docs/configuration.md).
# listen, health_listen and metrics_listen are set by the chart.
listen = {{ include "lowwater.target" . | toJson }}
health_listen = {{ printf ":%d" (int $s.healthPort) | toJson }}
{{- if .Values.metrics.enabled }}
metrics_listen = {{ printf ":%d" (int .Values.metrics.port) | toJson }}
{{- end }}
{{- range $key := keys $config | sortAlpha }}
{{- $value := get $config $key }}
{{- if and (ne $key "kafka") (ne $key "subscriptions") (not (kindIs "invalid" $value)) }}
{{ include "lowwater.toml.key" $key }} = {{ include "lowwater.toml.value" $value }}
{{- end }}
{{- end }}
{{- with $config.kafka }}

[kafka]
{{- range $key := keys . | sortAlpha }}
{{ include "lowwater.toml.key" $key }} = {{ include "lowwater.toml.value" (get $.Values.sidecar.config.kafka $key) }}
{{- end }}
{{- end }}
{{- range $sub := $config.subscriptions }}

[[subscriptions]]
{{- range $key := keys $sub | sortAlpha }}
{{ include "lowwater.toml.key" $key }} = {{ include "lowwater.toml.value" (get $sub $key) }}
{{- end }}
{{- end }}
{{ end }}

{{/* --- checks ------------------------------------------------------------------------------ */}}

{{/*
PUBLIC. Fails, with a message naming the values, when they cannot work together; renders nothing.
Context: as for "lowwater.sidecar", plus `terminationGracePeriodSeconds` when the caller's
pod spec sets its own (it defaults to the chart value).
*/}}
{{- define "lowwater.validate" -}}
{{- $v := .Values }}
{{- $s := $v.sidecar }}
{{- $grace := int (ternary .terminationGracePeriodSeconds $v.terminationGracePeriodSeconds (hasKey . "terminationGracePeriodSeconds")) }}
{{- $drainText := default "30s" $s.config.drain_timeout }}
{{- $drain := float64 (include "lowwater.seconds" $drainText) }}
{{- $shutdown := float64 (include "lowwater.seconds" $v.worker.shutdownTimeout) }}
{{- if le $drain 0.0 }}
{{- fail (printf "lowwater: sidecar.config.drain_timeout must be greater than zero, got %s" $drainText) }}
{{- end }}
{{- $needed := addf $drain $shutdown }}
{{- if le (float64 $grace) $needed }}
{{- fail (printf "lowwater: terminationGracePeriodSeconds (%d) must be greater than sidecar.config.drain_timeout (%s) + worker.shutdownTimeout (%s) = %gs, so that the worker's shutdown, the sidecar's drain and its final commit end before Kubernetes kills the pod" $grace $drainText $v.worker.shutdownTimeout $needed) }}
{{- end }}
{{- if and (eq $s.mode "container") (lt $drain $shutdown) }}
{{- fail (printf "lowwater: with sidecar.mode=container the worker and the sidecar are stopped together, so sidecar.config.drain_timeout (%s) must be at least worker.shutdownTimeout (%s): the sidecar's drain has to outlast the worker's last settlements" $drainText $v.worker.shutdownTimeout) }}
{{- end }}
{{- if and (eq $s.mode "native") (hasKey . "Capabilities") }}
{{- if semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version }}
{{- fail (printf "lowwater: sidecar.mode=native needs Kubernetes 1.29 or later (init containers with restartPolicy: Always); this cluster is %s: set sidecar.mode=container" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}
{{- $ports := dict }}
{{- $_ := set $ports (printf "%d" (int $s.healthPort)) "sidecar.healthPort" }}
{{- if $v.metrics.enabled }}
{{- $key := printf "%d" (int $v.metrics.port) }}
{{- if hasKey $ports $key }}
{{- fail (printf "lowwater: metrics.port and %s are both %s" (get $ports $key) $key) }}
{{- end }}
{{- $_ := set $ports $key "metrics.port" }}
{{- end }}
{{- if eq $s.transport "tcp" }}
{{- $key := printf "%d" (int $s.tcpPort) }}
{{- if hasKey $ports $key }}
{{- fail (printf "lowwater: sidecar.tcpPort and %s are both %s" (get $ports $key) $key) }}
{{- end }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) }}
{{- fail "lowwater: metrics.serviceMonitor.enabled needs metrics.enabled: the ServiceMonitor scrapes metrics_listen" }}
{{- end }}
{{- range $secret := $s.secrets.kafka }}
{{- if hasKey ($s.config.kafka | default dict) $secret.property }}
{{- fail (printf "lowwater: the librdkafka property %q is set both in sidecar.config.kafka and in sidecar.secrets.kafka; the TOML file would win over the Secret: remove it from sidecar.config.kafka" $secret.property) }}
{{- end }}
{{- end }}
{{- end }}

{{/* --- the sidecar -------------------------------------------------------------------------- */}}

{{- define "lowwater.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* One gRPC probe on the health port: the default service "" (no `service` field), or
the one named by .service ("lowwater.live" for liveness and startup). */}}
{{- define "lowwater.probe" -}}
{{- $timing := .timing -}}
grpc:
  port: {{ int .port }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
{{- range $key := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" "successThreshold" }}
{{- if hasKey $timing $key }}
{{ $key }}: {{ int (get $timing $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
PUBLIC. The lowwater sidecar container, as one item of a container list. In sidecar.mode
native it carries `restartPolicy: Always` and belongs under `initContainers:`; in mode
container it belongs under `containers:`, before the worker. Example:

  initContainers:
    {{- include "lowwater.sidecar" (dict "Values" .Values.lowwater "Release" .Release) | nindent 4 }}
*/}}
{{- define "lowwater.sidecar" -}}
{{- include "lowwater.validate" . }}
{{- $s := .Values.sidecar -}}
- name: lowwater
  image: {{ include "lowwater.image" $s.image | quote }}
  imagePullPolicy: {{ $s.image.pullPolicy }}
  {{- if eq $s.mode "native" }}
  restartPolicy: Always
  {{- end }}
  args:
    - --config
    - /etc/lowwater/lowwater.toml
  {{- if or $s.secrets.redisUrl.name $s.secrets.kafka $s.env }}
  env:
    {{- with $s.secrets.redisUrl.name }}
    - name: LOWWATER_REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $s.secrets.redisUrl.key }}
    {{- end }}
    {{- range $s.secrets.kafka }}
    - name: {{ include "lowwater.kafkaEnvName" .property }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .key }}
    {{- end }}
    {{- with $s.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  ports:
    - name: health
      containerPort: {{ int $s.healthPort }}
      protocol: TCP
    {{- if .Values.metrics.enabled }}
    - name: metrics
      containerPort: {{ int .Values.metrics.port }}
      protocol: TCP
    {{- end }}
  startupProbe:
    {{- include "lowwater.probe" (dict "port" $s.healthPort "timing" $s.probes.startup "service" "lowwater.live") | nindent 4 }}
  readinessProbe:
    {{- include "lowwater.probe" (dict "port" $s.healthPort "timing" $s.probes.readiness) | nindent 4 }}
  livenessProbe:
    {{- include "lowwater.probe" (dict "port" $s.healthPort "timing" $s.probes.liveness "service" "lowwater.live") | nindent 4 }}
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "lowwater.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: lowwater-config
      mountPath: /etc/lowwater
      readOnly: true
    - name: lowwater-tmp
      mountPath: /tmp
    {{- if eq $s.transport "unix" }}
    - name: lowwater-socket
      mountPath: {{ $s.socketDir }}
    {{- end }}
    {{- range $s.secrets.files }}
    - name: {{ printf "lowwater-secret-%s" .name }}
      mountPath: {{ .mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{/*
PUBLIC. The pod volumes the sidecar needs (its config, /tmp, the socket directory, mounted
Secrets), as list items for `volumes:`. The ConfigMap is the one this chart renders.
*/}}
{{- define "lowwater.volumes" -}}
{{- $s := .Values.sidecar -}}
- name: lowwater-config
  configMap:
    name: {{ include "lowwater.configMapName" . }}
- name: lowwater-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if eq $s.transport "unix" }}
- name: lowwater-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- range $s.secrets.files }}
- name: {{ printf "lowwater-secret-%s" .name }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: 288  # 0440: the pod's fsGroup can read
{{- end }}
{{- end }}

{{/* PUBLIC. The worker container's environment items: where the sidecar is, and its
shutdown budget in seconds. */}}
{{- define "lowwater.workerEnv" -}}
- name: LOWWATER_TARGET
  value: {{ include "lowwater.target" . | quote }}
- name: LOWWATER_SHUTDOWN_TIMEOUT_SECONDS
  value: {{ include "lowwater.seconds" .Values.worker.shutdownTimeout | quote }}
{{- end }}

{{/* PUBLIC. The worker container's volumeMounts items for the sidecar's socket (none with
transport tcp). */}}
{{- define "lowwater.workerVolumeMounts" -}}
{{- if eq .Values.sidecar.transport "unix" -}}
- name: lowwater-socket
  mountPath: {{ .Values.sidecar.socketDir }}
{{- end }}
{{- end }}
