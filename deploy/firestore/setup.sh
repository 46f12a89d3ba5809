#!/usr/bin/env bash
# One-time Firestore setup for sessiongate.
#
# What it does, in order (each step is safe to run again):
#   1. enables the APIs it needs;
#   2. creates the Firestore (Native mode) database, unless it exists;
#   3. exempts the write-heavy / never-queried fields from single-field indexing;
#   4. enables the TTL policy on `expires_at` of both collections;
#   5. deploys firestore.rules (deny every client-SDK request);
#   6. creates the sidecar's Google service account (GSA) unless it exists and grants
#      it roles/datastore.user;
#   7. lets the Kubernetes service account (KSA) act as that GSA (GKE Workload Identity).
#
# Steps 3 and 4 are the same settings firestore.indexes.json declares; use either this
# script or `firebase deploy --only firestore:indexes` (see README.md), not both by hand
# with different field lists.
#
# Run it as someone who may administer Firestore and IAM in the project (for example
# roles/owner, or roles/datastore.owner + roles/firebaserules.admin +
# roles/iam.serviceAccountAdmin + roles/resourcemanager.projectIamAdmin).
#
# Usage:  PROJECT=my-project DATABASE=sessiongate ./setup.sh
# Every variable below can be overridden from the environment.
#
# Command names and flags were checked against the gcloud reference pages
# (cloud.google.com/sdk/gcloud/reference/firestore/...). Index and TTL changes are
# long-running operations: gcloud waits for each one unless you add --async, and a TTL
# policy can take several minutes to become active.

set -euo pipefail

# --- Settings -------------------------------------------------------------------------

# Google Cloud project that holds the database.
PROJECT="${PROJECT:-your-gcp-project}"
# Firestore database ID. A dedicated database is recommended, because security rules are
# per database and firestore.rules denies everything (see README.md). "(default)" works
# too if nothing else uses that database from client SDKs.
DATABASE="${DATABASE:-sessiongate}"
# Location used only if the database has to be created (cannot be changed later).
# See https://cloud.google.com/firestore/docs/locations (e.g. eur3, nam5, europe-west1).
LOCATION="${LOCATION:-eur3}"
# Google service account the sidecar runs as.
GSA="${GSA:-sessiongate@${PROJECT}.iam.gserviceaccount.com}"
# Kubernetes service account of the pods running the sidecar, and its namespace.
KSA="${KSA:-sessiongate}"
KSA_NAMESPACE="${KSA_NAMESPACE:-default}"
# Collection name: must match sessiongate's configuration (store.collection).
SESSIONS_COLLECTION="${SESSIONS_COLLECTION:-sessiongate_sessions}"
# Set to 0 to skip the Workload Identity binding (e.g. when not running on GKE).
SETUP_WORKLOAD_IDENTITY="${SETUP_WORKLOAD_IDENTITY:-1}"

# Fields never used in a query. Indexing them only costs index-entry writes on every
# session update, and indexing monotonically increasing timestamps caps the collection
# at ~500 writes/s. A map field's exemption covers its subfields (vault.*).
# Fields NOT listed here (state, subject, version, ...) keep their automatic indexes.
SESSIONS_UNINDEXED_FIELDS=(
  last_seen_at
  expires_at
  vault
  rotated_at
  login_claim_until
  login_claim_owner
  created_at
  authenticated_at
  successor
  reason
  grace_until
  expires_at_ms
)

# --- Helpers --------------------------------------------------------------------------

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '\n==> %s\n' "$*"; }

if [[ "${PROJECT}" == "your-gcp-project" || -z "${PROJECT}" ]]; then
  echo "Set PROJECT (and check the other variables at the top of $0)." >&2
  exit 2
fi

# --quiet makes gcloud take defaults instead of prompting, so the script can run
# unattended.
gc() { gcloud --project="${PROJECT}" --quiet "$@"; }

# --- 1. APIs --------------------------------------------------------------------------

log "Enabling the Firestore and Firebase Rules APIs"
gc services enable firestore.googleapis.com firebaserules.googleapis.com

# --- 2. Database ----------------------------------------------------------------------

log "Ensuring database ${DATABASE} exists"
if gc firestore databases describe --database="${DATABASE}" >/dev/null 2>&1; then
  echo "Database ${DATABASE} already exists."
else
  # --delete-protection: a session store should not disappear by accident. Remove the
  # flag if you want to be able to delete the database without turning it off first.
  gc firestore databases create \
    --database="${DATABASE}" \
    --location="${LOCATION}" \
    --type=firestore-native \
    --delete-protection
fi

# --- 3. Single-field index exemptions -------------------------------------------------

exempt_fields() {
  local collection="$1"
  shift
  local field
  for field in "$@"; do
    echo "Disabling single-field indexes on ${collection}.${field}"
    gc firestore indexes fields update "${field}" \
      --database="${DATABASE}" \
      --collection-group="${collection}" \
      --disable-indexes
  done
}

log "Exempting fields from single-field indexing"
exempt_fields "${SESSIONS_COLLECTION}" "${SESSIONS_UNINDEXED_FIELDS[@]}"

# --- 4. TTL policies ------------------------------------------------------------------

# Only one TTL field per collection group. The field must hold a Timestamp; documents
# where it is missing or not a Timestamp are never deleted by TTL. Deletion is lazy
# (typically within 24 h after expiry), which is why sessiongate checks expires_at on
# every read as well.
log "Enabling TTL on expires_at"
for collection in "${SESSIONS_COLLECTION}"; do
  echo "TTL policy on ${collection}.expires_at"
  gc firestore fields ttls update expires_at \
    --database="${DATABASE}" \
    --collection-group="${collection}" \
    --enable-ttl
done

# --- 5. Security rules ----------------------------------------------------------------

# gcloud has no GA command for Firestore security rules. Two ways exist:
#  a) the Firebase CLI (npm package firebase-tools): `firebase deploy --only
#     firestore:rules`, driven by a firebase.json. The single-object form with a
#     "database" key is what selects a named database; it needs a recent firebase-tools
#     (checked against the firebase-tools source, v15 line). The project must be a
#     Firebase project (or have the Firebase Rules API enabled, step 1).
#  b) `gcloud alpha firebase security-rules release cloud.firestore/DATABASE
#     --source=FILE` (alpha: present in the current gcloud reference, may be missing from
#     older SDKs and may change).
# The script uses (a) when `firebase` is on PATH, else (b).
log "Deploying security rules to ${DATABASE}"
if command -v firebase >/dev/null 2>&1; then
  rules_dir="$(mktemp -d)"
  trap 'rm -rf "${rules_dir}"' EXIT
  cp "${SCRIPT_DIR}/firestore.rules" "${rules_dir}/firestore.rules"
  cat >"${rules_dir}/firebase.json" <<EOF
{
  "firestore": {
    "database": "${DATABASE}",
    "rules": "firestore.rules"
  }
}
EOF
  (cd "${rules_dir}" && firebase deploy --only firestore:rules --project "${PROJECT}" --non-interactive)
else
  echo "firebase CLI not found; using 'gcloud alpha firebase security-rules release'."
  gc alpha firebase security-rules release "cloud.firestore/${DATABASE}" \
    --source="${SCRIPT_DIR}/firestore.rules"
fi

# --- 6. Service account and its Firestore role ----------------------------------------

log "Ensuring service account ${GSA} exists"
if gc iam service-accounts describe "${GSA}" >/dev/null 2>&1; then
  echo "Service account ${GSA} already exists."
else
  # Only works when GSA lives in PROJECT (the default value above); otherwise create it
  # in its own project first.
  gc iam service-accounts create "${GSA%%@*}" --display-name="sessiongate sidecar"
fi

# roles/datastore.user = read/write documents, run queries, transactions and listeners.
# It cannot change indexes, TTL policies or rules (that is datastore.indexAdmin /
# datastore.owner / firebaserules.*), so a compromised sidecar cannot turn off TTL or
# open the rules.
#
# Granted on the project, it covers every database in the project. To limit it to the
# sessiongate database, IAM conditions on the database resource name can be used
# instead, e.g.
#   --condition="expression=resource.name==\"projects/${PROJECT}/databases/${DATABASE}\",title=sessiongate-db-only"
# (not enabled here: I could not confirm the exact resource-name form Firestore evaluates
# conditions against from the reference pages; test it before relying on it).
#
# --condition=None adds the binding without a condition, without prompting, when the
# project policy already contains conditional bindings.
log "Granting roles/datastore.user to ${GSA}"
gc projects add-iam-policy-binding "${PROJECT}" \
  --member="serviceAccount:${GSA}" \
  --role="roles/datastore.user" \
  --condition=None >/dev/null

# --- 7. GKE Workload Identity ---------------------------------------------------------

# With Workload Identity the pod gets no key file: the GKE metadata server hands the
# sidecar short-lived tokens for GSA, and the firestore crate picks them up through
# Application Default Credentials. Two bindings make that work:
#   - IAM: the KSA (identified as PROJECT.svc.id.goog[NAMESPACE/KSA]) gets
#     roles/iam.workloadIdentityUser on the GSA, i.e. may impersonate it;
#   - Kubernetes: the KSA is annotated with the GSA it maps to.
# The cluster (and node pool) must have Workload Identity enabled, and the pod spec must
# use serviceAccountName: KSA.
#
# Alternative on current GKE (Workload Identity Federation for GKE): skip the GSA and
# grant roles/datastore.user directly to the principal
#   principal://iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/PROJECT.svc.id.goog/subject/ns/NAMESPACE/sa/KSA
if [[ "${SETUP_WORKLOAD_IDENTITY}" == "1" ]]; then
  log "Binding KSA ${KSA_NAMESPACE}/${KSA} to ${GSA} (Workload Identity)"
  gc iam service-accounts add-iam-policy-binding "${GSA}" \
    --role="roles/iam.workloadIdentityUser" \
    --member="serviceAccount:${PROJECT}.svc.id.goog[${KSA_NAMESPACE}/${KSA}]" >/dev/null

  if command -v kubectl >/dev/null 2>&1; then
    # Needs kubectl pointed at the right cluster, and the KSA to exist already.
    kubectl annotate serviceaccount "${KSA}" \
      --namespace "${KSA_NAMESPACE}" \
      "iam.gke.io/gcp-service-account=${GSA}" \
      --overwrite
  else
    echo "kubectl not found. Annotate the KSA yourself:"
    echo "  kubectl annotate serviceaccount ${KSA} --namespace ${KSA_NAMESPACE} iam.gke.io/gcp-service-account=${GSA}"
  fi
fi

log "Done. Check with:"
echo "  gcloud firestore fields ttls list --database=${DATABASE} --project=${PROJECT}"
echo "  gcloud firestore indexes fields list --database=${DATABASE} --project=${PROJECT}"
