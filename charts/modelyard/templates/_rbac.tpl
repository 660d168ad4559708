{{/*
The operator's permissions on namespaced objects: the Model and what it owns. No wildcards
(tests/chart checks), no Secrets (pods get them via envFrom; the operator never reads them).
*/}}
{{- define "modelyard.namespacedRules" -}}
- apiGroups: [modelyard.io]
  resources: [models, models/status]
  verbs: [get, list, watch, patch, update]
# children's ownerReferences set blockOwnerDeletion: clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) require this
- apiGroups: [modelyard.io]
  resources: [models/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, get, list, watch, patch, update, delete]
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [create, get, list, watch, patch, update, delete]
- apiGroups: [""]
  resources: [services, persistentvolumeclaims, configmaps]
  verbs: [create, get, list, watch, patch, update, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* kopf scans CRDs to find the resources it serves (cluster-scoped, so always a ClusterRole). */}}
{{- define "modelyard.crdRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}
