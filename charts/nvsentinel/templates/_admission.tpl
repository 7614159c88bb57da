{{/*
Admission control ("a node speaks only for itself"): which enforcement the chart renders.

admission.mode: policy | webhook | both | auto. auto picks the in-process ValidatingAdmissionPolicy
(templates/admission-policy.yaml) where the server serves admissionregistration.k8s.io/v1
ValidatingAdmissionPolicy (Kubernetes >= 1.30), and the admission webhook elsewhere. The kind-level
capability is checked, not the group: admissionregistration.k8s.io/v1 exists since 1.16 (webhooks).
`helm template` knows no kinds unless told:
  --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy

Returns "true" or "". The webhook template renders when `not` of this holds (auto), or for
webhook/both. A missing `admission` block reads as auto, so the chart renders before it is set.
*/}}
{{- define "nvsentinel.admissionPolicyEnabled" -}}
{{- $mode := (.Values.admission | default dict).mode | default "auto" -}}
{{- if or (eq $mode "policy") (eq $mode "both") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy")) -}}
true
{{- end -}}
{{- end -}}

{{/* The username of a ServiceAccount of this release. Call with (dict "root" $ "name" "<component>"). */}}
{{- define "nvsentinel.serviceAccountUser" -}}
system:serviceaccount:{{ .root.Release.Namespace }}:{{ include "nvsentinel.prefix" .root }}-{{ .name }}
{{- end -}}

{{/*
A command line split the way the remediation controller splits --reboot-command (Python's
shlex.split: POSIX rules, no comments), rendered as a JSON list of strings, which is also a CEL list
literal. A word is a run of unquoted characters, backslash escapes and quoted parts, so
`sh -c 'echo "a b"'` is [sh, -c, echo "a b"]:
  'single'   taken literally;
  "double"   \" and \\ unescaped, any other backslash kept;
  \x         x, outside quotes.
Whitespace is space, tab, CR and LF, as in shlex. An unterminated quote or a trailing backslash (what
shlex refuses, and the controller with it) fails the render. tests/helm/test_chart_admission_policy.py
compares this with shlex.split.
*/}}
{{- define "nvsentinel.shellWords" -}}
{{- $word := `(?:[^ \t\r\n'"\\]|\\(?s:.)|'[^']*'|"(?:[^"\\]|\\(?s:.))*")+` -}}
{{- $part := `[^'"\\]+|\\(?s:.)|'[^']*'|"(?:[^"\\]|\\(?s:.))*"` -}}
{{- if regexReplaceAll $word . "" | regexMatch `[^ \t\r\n]` -}}
{{- fail (printf "controllers.remediation.rebootCommand %q is not a shell command line (an unterminated quote or a trailing backslash)" .) -}}
{{- end -}}
{{- $words := list -}}
{{- range $w := regexFindAll $word . -1 -}}
{{- $out := "" -}}
{{- range $p := regexFindAll $part $w -1 -}}
{{- if hasPrefix "'" $p -}}
{{- $out = print $out ($p | trimPrefix "'" | trimSuffix "'") -}}
{{- else if hasPrefix "\"" $p -}}
{{- $out = print $out (regexReplaceAll `\\(["\\])` ($p | trimPrefix "\"" | trimSuffix "\"") `${1}`) -}}
{{- else if hasPrefix "\\" $p -}}
{{- $out = print $out ($p | trimPrefix "\\") -}}
{{- else -}}
{{- $out = print $out $p -}}
{{- end -}}
{{- end -}}
{{- $words = append $words $out -}}
{{- end -}}
{{- toJson $words -}}
{{- end -}}

{{/*
The Node condition types the conditions controller writes (admission rule S4), as a JSON list:
NVSentinelGPUHealthy, and AcceleratedHardwareReady when controllers.conditions.mirror is not off.
*/}}
{{- define "nvsentinel.conditionTypes" -}}
{{- $types := list "NVSentinelGPUHealthy" -}}
{{- $cfg := (.Values.controllers.conditions | default dict) -}}
{{- if and $cfg.mirror (ne (toString $cfg.mirror) "off") (ne (toString $cfg.mirror) "false") -}}
{{- $types = append $types "AcceleratedHardwareReady" -}}
{{- end -}}
{{- toJson $types -}}
{{- end -}}
