{{/*
The alert and recording rules, rendered from .Values.prometheusRule (see values.yaml and
docs/runbooks.md). templates/prometheusrule.yaml embeds "flowwatch.rules.groups";
`cargo xtask render-manifests` writes the same groups, with the default values, to
deploy/prometheus/flowwatch-rules.yaml.

Prometheus template text ({{ $labels.x }}, {{ $value }}) is written inside Go raw strings
({{` ... `}}) so that Helm passes it through untouched.
*/}}

{{/* The labels of one workload edge, plus the aggregation labels: "a, b, c". */}}
{{- define "flowwatch.rules.edgeBy" -}}
{{- join ", " (concat (list "src_namespace" "src_workload" "dst_namespace" "dst_workload" "dst_port" "protocol") .Values.prometheusRule.aggregationLabels) -}}
{{- end }}

{{/* The labels of one edge as `flowwatch policy whatif` reads it (with the ends' kinds and the
outcome), plus the aggregation labels. */}}
{{- define "flowwatch.rules.historyBy" -}}
{{- join ", " (concat (list "src_namespace" "src_kind" "src_workload" "dst_namespace" "dst_kind" "dst_workload" "dst_port" "protocol" "outcome") .Values.prometheusRule.aggregationLabels) -}}
{{- end }}

{{/* A namespace pair plus the aggregation labels. */}}
{{- define "flowwatch.rules.pairBy" -}}
{{- join ", " (concat (list "src_namespace" "dst_namespace") .Values.prometheusRule.aggregationLabels) -}}
{{- end }}

{{/* An agent (job, instance) plus the aggregation labels. */}}
{{- define "flowwatch.rules.agentBy" -}}
{{- join ", " (concat (list "job" "instance") .Values.prometheusRule.aggregationLabels) -}}
{{- end }}

{{/* A Prometheus duration of one unit ("10m", "90s", "1d", "500ms") in whole seconds. */}}
{{- define "flowwatch.rules.seconds" -}}
{{- $d := toString . -}}
{{- $units := dict "ms" 0 "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 "y" 31536000 -}}
{{- $unit := regexFind "[a-z]+$" $d -}}
{{- if not (hasKey $units $unit) }}{{ fail (printf "%q is not a duration such as 10m" $d) }}{{ end -}}
{{- $n := int64 (trimSuffix $unit $d) -}}
{{- if eq $unit "ms" }}{{ div $n 1000 }}{{ else }}{{ mul $n (get $units $unit) }}{{ end -}}
{{- end }}

{{/*
A selector of `metric` in the alerts' namespace scope: dict "root" $ "metric" name "matchers"
extra matchers (a string, may be empty). With an include list, the union of the edges whose
source and whose destination namespace is included.
*/}}
{{- define "flowwatch.rules.scoped" -}}
{{- $r := .root.Values.prometheusRule -}}
{{- $m := list -}}
{{- if .matchers }}{{ $m = append $m .matchers }}{{ end -}}
{{- with $r.namespaces.exclude -}}
{{- $re := join "|" . -}}
{{- $m = append $m (printf "src_namespace!~%s" (quote $re)) -}}
{{- $m = append $m (printf "dst_namespace!~%s" (quote $re)) -}}
{{- end -}}
{{- if $r.namespaces.include -}}
{{- $re := join "|" $r.namespaces.include -}}
({{ .metric }}{ {{- join "," (append $m (printf "src_namespace=~%s" (quote $re))) -}} } or {{ .metric }}{ {{- join "," (append $m (printf "dst_namespace=~%s" (quote $re))) -}} })
{{- else if $m -}}
{{ .metric }}{ {{- join "," $m -}} }
{{- else -}}
{{ .metric }}
{{- end -}}
{{- end }}

{{/*
`unless metric{...}` for every expected edge, one per line, indented by "indent" spaces and each
preceded by a newline ("" without expected edges): dict "root" $ "metric" name "indent" n.
*/}}
{{- define "flowwatch.rules.expected" -}}
{{- $metric := .metric -}}
{{- $fields := dict "srcNamespace" "src_namespace" "srcWorkload" "src_workload" "dstNamespace" "dst_namespace" "dstWorkload" "dst_workload" "dstPort" "dst_port" "protocol" "protocol" -}}
{{- $lines := list -}}
{{- range .root.Values.prometheusRule.expectedEdges -}}
{{- $edge := . -}}
{{- $m := list -}}
{{- range $key := keys $fields | sortAlpha -}}
{{- if hasKey $edge $key -}}
{{- $m = append $m (printf "%s=~%s" (get $fields $key) (quote (toString (get $edge $key)))) -}}
{{- end -}}
{{- end -}}
{{- $lines = append $lines (printf "unless %s{%s}" $metric (join "," $m)) -}}
{{- end -}}
{{- if $lines }}{{ join "\n" $lines | nindent (int .indent) }}{{ end -}}
{{- end }}

{{/*
A printf format and its arguments selecting a record for the alert's namespace pair (and
aggregation labels), for the annotations' `query`: `printf "rec{src_namespace=%q,...}" $labels.src_namespace ...`.
*/}}
{{- define "flowwatch.rules.pairQuery" -}}
{{- $labels := concat (list "src_namespace" "dst_namespace") .root.Values.prometheusRule.aggregationLabels -}}
{{- $fmt := list -}}
{{- $args := list -}}
{{- range $labels -}}
{{- $fmt = append $fmt (printf "%s=%%q" .) -}}
{{- $args = append $args (printf "$labels.%s" .) -}}
{{- end -}}
printf "{{ .record }}{ {{- join "," $fmt -}} }" {{ join " " $args }}
{{- end }}

{{/*
`(a, b) -> (c, d):port/proto, ...` of the record's series for the alert's namespace pair, sorted:
dict "root" $ "record" name.
*/}}
{{- define "flowwatch.rules.edgeList" -}}
{{ "{{" }} range $i, $e := {{ include "flowwatch.rules.pairQuery" . }} | query | sortByLabel "dst_workload" | sortByLabel "src_workload" {{ "}}" }}{{ "{{" }} if $i {{ "}}" }}, {{ "{{" }} end {{ "}}" }}{{ "{{" }} $e.Labels.src_workload {{ "}}" }} -> {{ "{{" }} $e.Labels.dst_workload {{ "}}" }}:{{ "{{" }} $e.Labels.dst_port {{ "}}" }}/{{ "{{" }} $e.Labels.protocol {{ "}}" }}{{ if .tier }}{{ "{{" }} with $e.Labels.tier {{ "}}" }} ({{ "{{" }} . {{ "}}" }} tier){{ "{{" }} end {{ "}}" }}{{ end }}{{ "{{" }} end {{ "}}" }}
{{- end }}

{{/*
One alerting rule: dict "root" $ "name" AlertName "key" values key under alerts "expr" PromQL
"summary" text "description" text (Prometheus templates allowed in both).
*/}}
{{- define "flowwatch.rules.alert" -}}
{{- $r := .root.Values.prometheusRule -}}
{{- $a := get $r.alerts .key -}}
{{- $labels := merge (dict "severity" $a.severity) (deepCopy ($a.labels | default dict)) (deepCopy ($r.additionalAlertLabels | default dict)) -}}
- alert: {{ .name }}
  expr: |
    {{- .expr | trim | nindent 4 }}
{{- if not (has (toString $a.for) (list "0" "0s" "0m" "0h" "")) }}
  for: {{ $a.for }}
{{- end }}
  labels:
    {{- toYaml $labels | nindent 4 }}
  annotations:
    summary: {{ .summary | quote }}
    description: {{ .description | quote }}
    runbook_url: {{ printf "%s#%s" $r.runbookBaseUrl (lower .name) | quote }}
{{- end }}

{{/* Every rule group (a YAML list, at column 0). */}}
{{- define "flowwatch.rules.groups" -}}
{{- $r := .Values.prometheusRule -}}
{{- $a := $r.alerts -}}
{{- $job := $r.jobSelector -}}
{{- $edgeBy := include "flowwatch.rules.edgeBy" . -}}
{{- $pairBy := include "flowwatch.rules.pairBy" . -}}
{{- $agentBy := include "flowwatch.rules.agentBy" . -}}
{{- $policy := list -}}
{{- if or $a.newEdge.enabled $a.blockedAttemptsSpike.enabled -}}
{{- $policy = append $policy `# Constant 1 while these rules are loaded. The new-edge and spike rules wait until their
# lookback is covered: right after the rules are installed every edge would be new, every
# rate a spike.
- record: flowwatch:rules_loaded
  expr: vector(1)` -}}
{{- end -}}
{{- if $a.uncoveredCrossNamespaceTraffic.enabled -}}
{{- $w := $a.uncoveredCrossNamespaceTraffic.window -}}
{{- $u := printf "flowwatch_uncovered_connections_total{%s}" $job -}}
{{- $policy = append $policy (printf `# Per uncovered edge: connections within the window. A counter's first sample is not an
# increase to increase(), so a series that did not exist a window ago counts as well.
- record: flowwatch:edge_uncovered_connections:window
  expr: |
    sum by (%s, scope) (
        (increase(%s[%s]) > 0)
      or
        (%s unless %s offset %s)
    )` $edgeBy $u $w $u $u $w) -}}
{{- $policy = append $policy (printf `# The uncovered edges across namespaces the alert is about: in scope, and not expected.
- record: flowwatch:edge_uncovered_connections:alerting
  expr: |
    %s%s` (include "flowwatch.rules.scoped" (dict "root" . "metric" "flowwatch:edge_uncovered_connections:window" "matchers" "scope=\"cross_namespace\"")) (include "flowwatch.rules.expected" (dict "root" . "metric" "flowwatch:edge_uncovered_connections:window" "indent" 4))) -}}
{{- $policy = append $policy (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchUncoveredCrossNamespaceTraffic" "key" "uncoveredCrossNamespaceTraffic"
    "expr" (printf "count by (%s) (flowwatch:edge_uncovered_connections:alerting)" $pairBy)
    "summary" "Traffic across namespaces that no NetworkPolicy governs"
    "description" (printf "%s%s%s" `{{ $value }} uncovered workload edge(s) from namespace {{ $labels.src_namespace }} to {{ $labels.dst_namespace }}, no NetworkPolicy selecting either side: ` (include "flowwatch.rules.edgeList" (dict "root" . "record" "flowwatch:edge_uncovered_connections:alerting")) `. Per edge: flowwatch:edge_uncovered_connections:alerting.`))) -}}
{{- end -}}
{{- if $a.newEdge.enabled -}}
{{- $n := $a.newEdge -}}
{{- $policy = append $policy (printf `# Per workload edge, the earliest Unix time an agent first saw it (each agent keeps its own
# across restarts in its state directory): a new edge is one first seen within the window.
- record: flowwatch:edge:first_seen
  expr: |
    min by (%s) (
      flowwatch_edge_first_seen_timestamp_seconds{%s}
    )` $edgeBy $job) -}}
{{- $policy = append $policy (printf `# Workload edges with connections or known to an agent (one series per edge, across agents,
# verdicts and outcomes): the new-edge rule reads a day of these rather than of the raw series.
- record: flowwatch:edge:seen
  expr: |
    group by (%s) (
        flowwatch_connections_total{%s,src_kind!="other",dst_kind!="other"}
      or
        flowwatch_edge_first_seen_timestamp_seconds{%s}
    )` $edgeBy $job $job) -}}
{{- $policy = append $policy (printf `# Edges new to the agents (first seen within the window) and to Prometheus (not seen within the
# lookback before the window), in scope, and not expected. The agents' memory keeps a restarted
# agent's edges old; Prometheus's keeps quiet what an agent forgot (a lost state directory, a new
# node); pods never name an edge, so rollouts, restarts and reused addresses add nothing.
- record: flowwatch:edge:new
  expr: |
    (
      %s > time() - %s
      unless on (%s)
      max_over_time(flowwatch:edge:seen[%s] offset %s)
    )
    and on () present_over_time(flowwatch:rules_loaded[5m] offset %s)%s` (include "flowwatch.rules.scoped" (dict "root" . "metric" "flowwatch:edge:first_seen" "matchers" "")) (include "flowwatch.rules.seconds" $n.window) $edgeBy $n.lookback $n.window $n.lookback (include "flowwatch.rules.expected" (dict "root" . "metric" "flowwatch:edge:first_seen" "indent" 4))) -}}
{{- $policy = append $policy (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchNewEdge" "key" "newEdge"
    "expr" (printf "count by (%s) (flowwatch:edge:new)" $pairBy)
    "summary" "Workload edges seen for the first time"
    "description" (printf "%s%s%s" `{{ $value }} new workload edge(s) from namespace {{ $labels.src_namespace }} to {{ $labels.dst_namespace }}: ` (include "flowwatch.rules.edgeList" (dict "root" . "record" "flowwatch:edge:new")) `. Per edge: flowwatch:edge:new (value: when it was first seen).`))) -}}
{{- end -}}
{{- if $a.enforcementDrift.enabled -}}
{{- $w := $a.enforcementDrift.window -}}
{{- $d := printf "flowwatch_enforcement_drift_connections_total{%s,cni_policy_present!=\"true\"}" $job -}}
{{- $policy = append $policy (printf `# Per edge and deciding tier (admin, networkpolicy, baseline): connections the policies deny that
# were established within the window (new series too). Left out: connections CNI-specific policies
# (not evaluated) may allow (cni_policy_present="true").
- record: flowwatch:edge_enforcement_drift_connections:window
  expr: |
    sum by (%s, tier) (
        (increase(%s[%s]) > 0)
      or
        (%s unless %s offset %s)
    )` $edgeBy $d $w $d $d $w) -}}
{{- $policy = append $policy (printf `# The drift edges the alert is about: in scope.
- record: flowwatch:edge_enforcement_drift_connections:alerting
  expr: |
    %s` (include "flowwatch.rules.scoped" (dict "root" . "metric" "flowwatch:edge_enforcement_drift_connections:window" "matchers" ""))) -}}
{{- $policy = append $policy (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchEnforcementDrift" "key" "enforcementDrift"
    "expr" (printf "count by (%s) (flowwatch:edge_enforcement_drift_connections:alerting)" $pairBy)
    "summary" "Connections the network policies deny were established"
    "description" (printf "%s%s%s" `{{ $value }} workload edge(s) from namespace {{ $labels.src_namespace }} to {{ $labels.dst_namespace }} are denied by policy but connected (the CNI is not enforcing the policies): ` (include "flowwatch.rules.edgeList" (dict "root" . "record" "flowwatch:edge_enforcement_drift_connections:alerting" "tier" true)) `. Per edge: flowwatch:edge_enforcement_drift_connections:alerting.`))) -}}
{{- end -}}
{{- if $a.blockedAttemptsSpike.enabled -}}
{{- $b := $a.blockedAttemptsSpike -}}
{{- $policy = append $policy (printf `# Failed attempts per second between two namespaces; the spike rule's baseline averages this
# record rather than reading an hour of raw series.
- record: flowwatch:namespace_pair_blocked_attempts:rate
  expr: |
    sum by (%s, verdict) (rate(flowwatch_blocked_attempts_total{%s}[%s]))` $pairBy $job $b.window) -}}
{{- $rate := include "flowwatch.rules.scoped" (dict "root" . "metric" "flowwatch:namespace_pair_blocked_attempts:rate" "matchers" "") -}}
{{- $policy = append $policy (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchBlockedAttemptsSpike" "key" "blockedAttemptsSpike"
    "expr" (printf "(%s > %v)\nand\n(\n  %s\n  > %v * (\n      avg_over_time(flowwatch:namespace_pair_blocked_attempts:rate[%s] offset %s)\n    or\n      (%s * 0 and on () present_over_time(flowwatch:rules_loaded[5m] offset %s))\n  )\n)" $rate $b.minRatePerSecond $rate $b.factor $b.baselineWindow $b.window $rate $b.baselineWindow)
    "summary" "Spike of failed connection attempts between namespaces"
    "description" (printf "%s%v%s%s%s" `{{ $labels.src_namespace }} -> {{ $labels.dst_namespace }}: {{ $value | humanize }}/s failed attempts with verdict {{ $labels.verdict }}, over ` $b.factor `x the previous ` $b.baselineWindow `. verdict=denied: the policies block them (misconfigured client or probing); verdict=allowed: the policies allow them, something else is broken.`))) -}}
{{- end -}}
{{- $agent := list -}}
{{- if $a.agentDown.enabled -}}
{{- $agent = append $agent (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchAgentDown" "key" "agentDown"
    "expr" (printf "up{%s} == 0" $job)
    "summary" "flowwatch agent cannot be scraped"
    "description" `{{ $labels.instance }} ({{ $labels.job }}) cannot be scraped: flows on that node are not observed.`)) -}}
{{- end -}}
{{- if $a.agentAbsent.enabled -}}
{{- $agent = append $agent (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchAgentAbsent" "key" "agentAbsent"
    "expr" (printf "absent(up{%s})" $job)
    "summary" "No flowwatch agent is scraped"
    "description" (printf "Prometheus has no target matching %s: no agent runs, or the agents are scraped under another job (set prometheusRule.jobSelector, see docs/deploy.md). No flow is observed." $job))) -}}
{{- end -}}
{{- if $a.kernelEventsLost.enabled -}}
{{- $k := $a.kernelEventsLost -}}
{{- $agent = append $agent (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchKernelEventsLost" "key" "kernelEventsLost"
    "expr" (printf "sum by (%s, reason) (increase(flowwatch_kernel_events_lost_total{%s}[%s])) > %v" $agentBy $job $k.window $k.threshold)
    "summary" "flowwatch is losing flow data"
    "description" (printf "%s%s%s" `{{ $labels.instance }} lost {{ $value | humanize }} ({{ $labels.reason }}) in ` $k.window `: traffic nobody sees.`))) -}}
{{- end -}}
{{- if $a.kernelMapNearlyFull.enabled -}}
{{- $agent = append $agent (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchKernelMapNearlyFull" "key" "kernelMapNearlyFull"
    "expr" (printf "max by (%s, map) (flowwatch_kernel_map_fill_ratio{%s}) > %v" $agentBy $job $a.kernelMapNearlyFull.threshold)
    "summary" "A flowwatch kernel map is nearly full"
    "description" `{{ $labels.instance }}: map {{ $labels.map }} is {{ $value | humanizePercentage }} full.`)) -}}
{{- end -}}
{{- if $a.noInterfacesAttached.enabled -}}
{{- $agent = append $agent (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchNoInterfacesAttached" "key" "noInterfacesAttached"
    "expr" (printf "max by (%s) (flowwatch_interfaces_attached{%s}) == 0" $agentBy $job)
    "summary" "flowwatch captures on no interface"
    "description" `{{ $labels.instance }} has no interface attached: no traffic is observed on that node.`)) -}}
{{- end -}}
{{- if $a.watchStale.enabled -}}
{{- $agent = append $agent (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchWatchStale" "key" "watchStale"
    "expr" (printf "max by (%s, kind) (flowwatch_watch_staleness_seconds{%s}) > %v" $agentBy $job $a.watchStale.thresholdSeconds)
    "summary" "flowwatch's view of the cluster is stale"
    "description" `{{ $labels.instance }}: the {{ $labels.kind }} watch has not been current for {{ $value | humanizeDuration }}; workloads and verdicts may be wrong.`)) -}}
{{- end -}}
{{- if $a.invalidPolicies.enabled -}}
{{- $agent = append $agent (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchInvalidPolicies" "key" "invalidPolicies"
    "expr" (printf "max by (%s) (flowwatch_policies_invalid{%s}) > 0" $agentBy $job)
    "summary" "NetworkPolicies skipped as invalid"
    "description" `{{ $labels.instance }} skips {{ $value }} invalid NetworkPolicies; verdicts ignore them.`)) -}}
{{- end -}}
{{- if $a.seriesBudgetExhausted.enabled -}}
{{- $agent = append $agent (include "flowwatch.rules.alert" (dict "root" . "name" "FlowwatchSeriesBudgetExhausted" "key" "seriesBudgetExhausted"
    "expr" (printf "sum by (%s, family) (increase(flowwatch_series_dropped_total{%s}[%s])) > 0" $agentBy $job $a.seriesBudgetExhausted.window)
    "summary" "flowwatch folds edges into the other bucket"
    "description" `{{ $labels.instance }}: family {{ $labels.family }} hit its series budget; raise agent.seriesBudget (FLOWWATCH_SERIES_BUDGET) or accept coarser edges.`)) -}}
{{- end -}}
{{- if $policy }}
- name: flowwatch.policy
  rules:
{{- range $policy }}
    {{- . | nindent 4 }}
{{- end }}
{{- end }}
{{- if $r.edgeHistory.enabled }}
- name: flowwatch.history
  interval: {{ $r.edgeHistory.interval }}
  rules:
    # Per workload edge and outcome, once per interval: the highest connection counter of the
    # interval, summed over agents (whatif's history; the range overlaps the previous
    # evaluation by 5m so that a late evaluation leaves no gap).
    - record: flowwatch:edge_connections:history
      expr: |
        sum by ({{ include "flowwatch.rules.historyBy" . }}) (
          max_over_time(flowwatch_connections_total{ {{- $job -}} }[{{ $r.edgeHistory.interval }}5m])
        )
{{- end }}
{{- if $agent }}
- name: flowwatch.agent
  rules:
{{- range $agent }}
    {{- . | nindent 4 }}
{{- end }}
{{- end }}
{{- end }}
