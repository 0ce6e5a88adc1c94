{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every resource name.
*/}}
{{- define "portcullis.fullname" -}}
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

{{/*
Chart label value.
*/}}
{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource of the release.
*/}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end }}

{{/*
Labels that select the controller pods. Never change them: a Deployment's selector is
immutable.
*/}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
The controller's ServiceAccount.
*/}}
{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The controller (and dataplane) image reference.
*/}}
{{- define "portcullis.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The dataplane image the controller puts into the array Deployments.
*/}}
{{- define "portcullis.dataplaneImage" -}}
{{- .Values.dataplane.image | default (include "portcullis.image" .) }}
{{- end }}

{{/*
The leader-election Lease name.
*/}}
{{- define "portcullis.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (printf "%s-leader" (include "portcullis.fullname" .)) }}
{{- end }}

{{/*
The controller's permissions on the API, shared by the ClusterRole (every namespace) and
the Role (only `watchNamespace`). Each rule says why the controller needs it.
*/}}
{{- define "portcullis.controllerRules" -}}
# The custom resources it reconciles.
- apiGroups: ["portcullis.io"]
  resources: ["gatewayarrays", "serverfarms"]
  verbs: ["get", "list", "watch"]
# The ServerFarms an Ingress becomes (owned by the Ingress).
- apiGroups: ["portcullis.io"]
  resources: ["serverfarms"]
  verbs: ["create", "patch", "delete"]
# Ingresses it serves, and their status.loadBalancer.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses/status"]
  verbs: ["patch", "update"]
{{- if not .Values.watchNamespace }}
# Which IngressClasses are Portcullis's (cluster-scoped: with watchNamespace a ClusterRole
# of its own grants this).
- apiGroups: ["networking.k8s.io"]
  resources: ["ingressclasses"]
  verbs: ["get", "list", "watch"]
{{- end }}
# Their status (observedGeneration, conditions, members, endpoints).
- apiGroups: ["portcullis.io"]
  resources: ["gatewayarrays/status", "serverfarms/status"]
  verbs: ["patch", "update"]
# Owned objects carry blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement
# admission plugin is on (OpenShift), setting it requires update on the owner's finalizers.
- apiGroups: ["portcullis.io"]
  resources: ["gatewayarrays/finalizers"]
  verbs: ["update"]
# Per array: the dataplane config (ConfigMap), the Service in front of the members and
# the members' ServiceAccount, all owned by the GatewayArray.
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The keyring/TLS Secret it writes per array, and the Secrets listeners and farms name,
# read one by one with `get`.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch", "delete"]
{{- if .Values.secrets.watchClusterWide }}
# secrets.watchClusterWide: list and watch Secrets, so changes reach members at once.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
{{- end }}
# Per array: the members' Deployment, PodDisruptionBudget, and the Role/RoleBinding that
# lets members read only their own ConfigMap and Secret.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Service servers resolve through EndpointSlices.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
# Member readiness and what each member reports having loaded.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events for notable actions (config applied, key rotated, farm rejected).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
