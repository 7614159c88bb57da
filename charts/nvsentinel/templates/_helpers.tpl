{{/*
The prefix of every object name: the release name or fullnameOverride, at most 40 characters so
`<prefix>-remediation-controller` and friends stay within the 63 of a Service or label value.
*/}}
{{- define "nvsentinel.prefix" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The controllers the chart knows, in chain order. */}}
{{- define "nvsentinel.controllerNames" -}}
quarantine conditions drain remediation resolution ttl
{{- end -}}

{{/* Labels every object carries. Call with (dict "root" $ "component" "<component>"). */}}
{{- define "nvsentinel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: nvsentinel
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: nvsentinel
app.kubernetes.io/component: {{ .component }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The immutable selector of a workload. Call with (dict "root" $ "component" "<component>"). */}}
{{- define "nvsentinel.selectorLabels" -}}
app.kubernetes.io/name: nvsentinel
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "nvsentinel.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{ with .Values.image.digest }}@{{ . }}{{ end }}
{{- end -}}

{{/* The reboot Job's image: controllers.remediation.rebootImage, else nvsentinel's own. */}}
{{- define "nvsentinel.rebootImage" -}}
{{ .Values.controllers.remediation.rebootImage | default (include "nvsentinel.image" .) }}
{{- end -}}

{{/* The Device API address its node-local clients dial. */}}
{{- define "nvsentinel.deviceApiAddress" -}}
unix://{{ .Values.node.socketDir }}/device.sock
{{- end -}}

{{/* Log flags every daemon takes. */}}
{{- define "nvsentinel.logArgs" -}}
- {{ printf "--log-format=%s" .Values.logging.format | quote }}
- {{ printf "--log-level=%s" .Values.logging.level | quote }}
{{- end -}}

{{/* NODE_NAME from the downward API: the daemons' --node-name is $(NODE_NAME). */}}
{{- define "nvsentinel.nodeNameEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end -}}

{{/*
Node agents' tolerations: the quarantine taint (any effect) always, so an agent keeps running on
the node it helped quarantine, then node.tolerations.
*/}}
{{- define "nvsentinel.nodeTolerations" -}}
- key: {{ .Values.chain.taint.key | quote }}
  operator: Exists
{{- with .Values.node.tolerations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Node agents run as root: the socket directory is a root-owned host path and the socket is 0660.
Nothing else: no privilege escalation, no capabilities, a read-only root filesystem.
*/}}
{{- define "nvsentinel.rootContainerSecurity" -}}
runAsUser: 0
runAsGroup: {{ index (include "nvsentinel.clientGroups" . | fromYaml) .component }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "nvsentinel.httpProbes" -}}
livenessProbe:
  httpGet: {path: {{ .live }}, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}

{{/*
A projected service-account token volume: a bound token (it names the pod, and so the node) that
expires; `expirationSeconds` is never 3607, which the API server silently extends to a year.
*/}}
{{- define "nvsentinel.projectedToken" -}}
- name: {{ .name }}
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: {{ .seconds }}
      - configMap:
          name: kube-root-ca.crt
          items: [{key: ca.crt, path: ca.crt}]
      - downwardAPI:
          items:
            - path: namespace
              fieldRef: {fieldPath: metadata.namespace}
{{- end -}}

{{/*
The Device API's clients run as uid 0 (the socket is root's, 0660), each with a group of its own: the
server, in a pid namespace of its own, cannot see their pids, and tells them apart by uid and gid
(SO_PEERCRED), so each gets its own share of --max-watchers-per-peer and --max-connections-per-peer.
A container cannot change its group (no CAP_SETGID).
*/}}
{{- define "nvsentinel.clientGroups" -}}
server: 0
nvml-provider: 65521
kmsg-monitor: 65522
publisher: 65523
remediation-agent: 65524
{{- end -}}

{{/* The site's XID catalog overrides (values.xidOverrides, docs/xid.md): one file for every daemon that
classifies (NVML provider, kernel-log monitor, publisher), found through the one variable they all read. */}}
{{- define "nvsentinel.xidOverridesEnv" -}}
{{- if .Values.xidOverrides }}
- {name: NVSENTINEL_XID_OVERRIDES, value: /etc/nvsentinel/xid-overrides/overrides.json}
{{- end }}
{{- end }}

{{- define "nvsentinel.xidOverridesMount" -}}
{{- if .Values.xidOverrides }}
- {name: xid-overrides, mountPath: /etc/nvsentinel/xid-overrides, readOnly: true}
{{- end }}
{{- end }}
