#!/usr/bin/env bash
# Deploys oauth-broker to Azure in one command: resource group, infrastructure (infra/main.bicep:
# Flex Consumption Function App, storage, Key Vault, Application Insights, managed identity and
# roles), the encryption key (created once, never replaced), the code package (scripts/package), a
# function key for Azure Data Factory that opens only the token functions (kept in Key Vault), and
# optionally the Data Factory assets of infra/adf. Then it prints the redirect URI to register at each
# vendor, writes a keyless consent link per integration to a private file (its path is printed) and
# prints the client id of each connection's pipeline credential.
#
# Usage:
#   infra/deploy.sh -g <resource-group> -l <location> -p <name-prefix> [options]
#   infra/deploy.sh -g <resource-group> -p <name-prefix> --rotate-encryption-key
#
# Options:
#   --integrations <file>   integrations file to ship (default: ./integrations.json if present).
#                           Every "%NAME%" in it must be set in this shell's environment on the first
#                           deployment: names used for client_secret (or containing SECRET, PASSWORD,
#                           TOKEN or KEY) go to Key Vault; the others become plain app settings.
#                           Secrets already in Key Vault may be left unset on later deployments.
#   --subscription <id>     Azure subscription (default: az's current one)
#   --public-url <url>      the broker's public base URL, if a custom domain fronts it
#   --data-factory <rg>/<name>
#                           an existing Data Factory: its managed identity may read the function key
#                           and the pipeline credentials' secrets (Key Vault Secrets User on each of
#                           those secrets, never on the vault), and the linked services, datasets and
#                           pipelines of infra/adf are imported
#   --adf-identity-access <integration>/<connection>
#                           (repeatable; with --data-factory) Data Factory's managed identity may get
#                           tokens for this connection with no secret at all: its object id is added to
#                           the integration's "callers" in the integrations file (edited in place, then
#                           shipped), and Entra ID callers are turned on: BROKER_ENTRA_TENANT_ID = this
#                           tenant, BROKER_ENTRA_AUDIENCE = --entra-audience, or else the client id of
#                           the app's managed identity (no app registration needed)
#   --entra-audience <uri>  the broker's audience when it has an app registration (its application ID
#                           URI and/or client id, comma-separated; needed for the Broker.Admin app
#                           role: docs/data-factory.md); turns Entra ID callers on
#   --connection <id>       connection id of the consent links and of the pipeline credential created
#                           per integration for Data Factory's REST linked services (LS_VendorApi_Broker,
#                           token endpoint; LS_VendorApi_Proxy, the proxy with HTTP Basic), its secret
#                           stored in Key Vault under the name infra/names.py computes (default: default)
#   --private-network       a virtual network with Flex VNet integration and private endpoints for
#                           storage and Key Vault, whose public network access is then disabled. Data
#                           Factory then needs a managed virtual network with a managed private endpoint
#                           to the vault, or a self-hosted integration runtime; re-runs must start from
#                           a network that reaches the vault's private endpoint (README)
#   --memory <MB>           Flex Consumption instance memory: 512, 2048 (default) or 4096
#   --alert-email <address> e-mail this address when a connection needs a new consent or an
#                           integration is misconfigured (an action group and a log alert rule on the
#                           broker's event lines in Application Insights; infra/alerts.bicep)
#   --package <zip>         deploy this package as it is (no build)
#   --skip-package          deploy dist/oauth-broker.zip as it is (no build)
#   --rotate-encryption-key put a new encryption key in front of the current ones (needs Key Vault
#                           Secrets Officer, which the deploying user gets) and reload the app
#
# Needs: Azure CLI >= 2.60.0 (logged in: az login, as a user, a service principal or a managed
# identity), python3, curl (>= 7.55), and for the package Rust + scripts/package's tools. Permissions:
# Owner (or Contributor + Role Based Access Control Administrator) on the resource group, Reader on the
# subscription (the soft-deleted vault lookup), and the right to register resource providers the first
# time a subscription uses them (README, "Permissions").
#
# Re-runs are safe: the encryption key secret is created only when the vault has none and is never
# written again (only --rotate-encryption-key prepends a key); a vault is found by name in the
# resource group even when the last deployment failed, a soft-deleted one is recovered, and the script
# stops if a vault exists whose key it cannot read.
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/.."

deployment=oauth-broker
# Azure CLI 2.60.0 is the first with the Flex Consumption commands this script uses
# (az functionapp list-flexconsumption-locations).
min_cli=2.60.0
encryption_secret=broker-encryption-keys
function_key_secret=broker-function-key
kv_api=2023-07-01
web_api=2024-04-01
# The functions Data Factory calls: its key "adf" is a function key on each, not a host key.
token_functions="token token-post"
rg="" location="" prefix="" subscription="" public_url="" data_factory="" connection=default
integrations="" skip_package=0 rotate=0 memory=2048 package="" alert_email="" private_network=0
adf_access=() entra_audience="" entra_tenant=""
# The admin key the broker checks itself on the routes that accept Entra ID callers (anonymous at the
# host): BROKER_API_KEY, a Key Vault reference to this secret (main.bicep's apiKeySecretName).
api_key_secret=broker-api-key
[[ -f integrations.json ]] && integrations=integrations.json

die() { echo "infra/deploy.sh: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -g|--resource-group) rg=${2:?}; shift 2 ;;
    -l|--location) location=${2:?}; shift 2 ;;
    -p|--prefix) prefix=${2:?}; shift 2 ;;
    --integrations) integrations=${2:?}; shift 2 ;;
    --no-integrations) integrations=""; shift ;;
    --subscription) subscription=${2:?}; shift 2 ;;
    --public-url) public_url=${2:?}; shift 2 ;;
    --data-factory) data_factory=${2:?}; shift 2 ;;
    --connection) connection=${2:?}; shift 2 ;;
    --adf-identity-access) adf_access+=("${2:?}"); shift 2 ;;
    --entra-audience) entra_audience=${2:?}; shift 2 ;;
    --memory) memory=${2:?}; shift 2 ;;
    --alert-email) alert_email=${2:?}; shift 2 ;;
    --private-network) private_network=1; shift ;;
    --package) package=${2:?}; skip_package=1; shift 2 ;;
    --skip-package) skip_package=1; shift ;;
    --rotate-encryption-key) rotate=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# Files named on the command line are relative to where the script was started.
from_caller() { if [[ -n $1 && $1 != /* && -e $caller_dir/$1 ]]; then echo "$caller_dir/$1"; else echo "$1"; fi; }
integrations=$(from_caller "$integrations")
package=$(from_caller "$package")

[[ -n $rg ]] || die "--resource-group is required (see --help)"
[[ $prefix =~ ^[a-z][a-z0-9]{2,10}$ ]] || die "--prefix must be 3-11 lowercase letters and digits, starting with a letter"
[[ $memory =~ ^(512|2048|4096)$ ]] || die "--memory must be 512, 2048 or 4096"
[[ -z $alert_email || $alert_email =~ ^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$ ]] \
  || die "--alert-email must be an e-mail address"
[[ $connection =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] \
  || die "--connection must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
for access in "${adf_access[@]}"; do
  [[ $access =~ ^[a-z0-9][a-z0-9_-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] \
    || die "--adf-identity-access is <integration>/<connection> (got $access)"
done
[[ ${#adf_access[@]} == 0 || -n $data_factory ]] || die "--adf-identity-access needs --data-factory <rg>/<factory> (whose managed identity it allows)"
[[ ${#adf_access[@]} == 0 || -n $integrations ]] || die "--adf-identity-access needs an integrations file (--integrations)"
[[ -z $entra_audience || $entra_audience =~ ^[^[:space:]]+$ ]] || die "--entra-audience must not contain spaces (comma-separate several)"
for tool in az python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
cli_version=$(az version --query '"azure-cli"' -o tsv 2>/dev/null || true)
python3 - "$cli_version" "$min_cli" <<'PY' || die "Azure CLI ${cli_version:-(unknown version)} is too old: $min_cli or later is needed (az upgrade)"
import sys
def parts(v):
    out = []
    for p in v.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        out.append(int(digits or 0))
    return out + [0] * (3 - len(out))
have, need = sys.argv[1], sys.argv[2]
sys.exit(0 if have and parts(have) >= parts(need) else 1)
PY
# curl reads headers from a file (-H @file, curl 7.55.0 and later): secrets stay off command lines.
curl_version=$(curl --version 2>/dev/null | sed -n '1s/^curl \([0-9][0-9.]*\).*/\1/p')
python3 - "$curl_version" 7.55.0 <<'PY' || die "curl ${curl_version:-(unknown version)} is too old: 7.55.0 or later is needed"
import sys
parts = lambda v: [int(p) for p in v.split(".")[:3]] + [0] * (3 - len(v.split(".")[:3]))
sys.exit(0 if sys.argv[1] and parts(sys.argv[1]) >= parts(sys.argv[2]) else 1)
PY
az account show -o none 2>/dev/null || die "not logged in to Azure: run az login"
if [[ -n $subscription ]]; then
  az account set --subscription "$subscription"
fi

workdir=$(mktemp -d)
chmod 700 "$workdir"
trap 'rm -rf "$workdir"' EXIT
umask 077

# Outputs of the last deployment of main.bicep in this resource group ("" when none or failed).
previous_output() {
  az deployment group show -g "$rg" -n "$deployment" --query "properties.outputs.$1.value" -o tsv 2>/dev/null || true
}

# The broker's Key Vault in this resource group, found by its name (kv-<prefix>-..., as main.bicep
# names it), not from the last deployment's outputs (empty after a failed deployment).
find_vault() {
  az keyvault list -g "$rg" --query "[?starts_with(name, 'kv-$prefix-')].name" -o tsv
}

# A soft-deleted vault of this resource group and prefix: "<name> <location>", or "". Listing deleted
# vaults needs Microsoft.KeyVault/locations/deletedVaults/read on the subscription (Reader there has
# it; az keyvault list-deleted, key-vault/general/key-vault-recovery). Without it a soft-deleted vault
# holding the encryption key could not be found, and the deployment would collide with its
# purge-protected name on every run: so a failed listing stops the script.
find_deleted_vault() {
  if ! az keyvault list-deleted --resource-type vault -o json >"$workdir/deleted-vaults.json" 2>"$workdir/az-error"; then
    die "could not list the soft-deleted Key Vaults of the subscription (az keyvault list-deleted): $(first_error). \
This needs Microsoft.KeyVault/locations/deletedVaults/read on the subscription (for example Reader on /subscriptions/$(az account show --query id -o tsv)); \
without it a soft-deleted vault that holds the encryption key cannot be found and recovered. Nothing was created."
  fi
  python3 -c '
import json, sys
rg, prefix = sys.argv[1].lower(), sys.argv[2]
for v in json.load(open(sys.argv[3])) or []:
    p = v.get("properties") or {}
    if v.get("name", "").startswith(f"kv-{prefix}-") and f"/resourcegroups/{rg}/" in (p.get("vaultId") or "").lower():
        print(v["name"], p.get("location") or "")
        break
' "$rg" "$prefix" "$workdir/deleted-vaults.json"
}

# The first line of the last captured az error (for messages; az errors carry no secret values).
first_error() { sed -n '/./{s/^ERROR: //;p;q}' "$workdir/az-error" 2>/dev/null | head -c 300; }

# Whether the last captured az error says "not found" (the only answer that means "absent": az prints
# the ARM error code in parentheses, e.g. "(ResourceNotFound)", "(SecretNotFound)").
error_is_not_found() {
  # az rest prints an HTTP error as "Not Found({...})".
  grep -Eq '\((ResourceNotFound|SecretNotFound|NotFound|ParentResourceNotFound|DeploymentNotFound)\)|^(ERROR: )?Not Found\(' "$workdir/az-error" 2>/dev/null
}

# Registers a resource provider the script's commands or templates use, if it is not registered:
# a brand-new subscription has few registered, a template deployment registers only those of what it
# deploys, and commands such as az functionapp list-flexconsumption-locations run before any
# deployment. Registering needs the <namespace>/register/action permission on the subscription
# (Contributor or Owner there; azure-resource-manager/management/resource-providers-and-types).
ensure_provider() {
  local ns=$1 state
  state=$(az provider show -n "$ns" --query registrationState -o tsv 2>/dev/null) || state=""
  [[ $state == Registered ]] && return 0
  log "registering the resource provider $ns in the subscription (${state:-state unknown}; once per subscription)"
  az provider register -n "$ns" --wait -o none 2>"$workdir/az-error" \
    || die "could not register the resource provider $ns: $(first_error). Registering needs $ns/register/action on the subscription (Contributor or Owner there); or ask someone who has it to run: az provider register -n $ns --wait"
}

# The signed-in deployer's object id, from the oid claim of its ARM access token: the same for users,
# service principals and managed identities, and no Microsoft Graph call (az ad ... needs Graph read,
# and answers nothing under a managed-identity login). access-token-claims-reference: oid is the
# principal's immutable object id.
deployer_object_id() {
  az account get-access-token --query accessToken -o tsv | python3 -c '
import base64, json, re, sys
token = sys.stdin.read().strip()
parts = token.split(".")
if len(parts) != 3:
    sys.exit("infra/deploy.sh: az account get-access-token answered something that is not a JWT")
payload = parts[1] + "=" * (-len(parts[1]) % 4)
claims = json.loads(base64.urlsafe_b64decode(payload))
oid = claims.get("oid", "")
if not re.fullmatch(r"[0-9a-fA-F-]{36}", oid):
    sys.exit("infra/deploy.sh: the access token carries no oid claim")
print(oid)
'
}

vault_id_of() { echo "/subscriptions/$(az account show --query id -o tsv)/resourceGroups/$rg/providers/Microsoft.KeyVault/vaults/$1"; }

# Whether a Key Vault secret exists, asked through ARM (needs no data-plane role): 0 yes, 1 no. Only
# "not found" means no; any other failure (throttling, a transient 5xx, a network error) is retried and
# then stops the script, so that two transient errors can never make it write a new encryption key.
secret_exists() {
  local vault=$1 name=$2 attempt
  [[ -n $vault ]] || return 1
  for attempt in 1 2 3 4; do
    if az resource show -g "$rg" --namespace Microsoft.KeyVault --parent "vaults/$vault" \
      --resource-type secrets -n "$name" --query id -o tsv >/dev/null 2>"$workdir/az-error"; then
      return 0
    fi
    error_is_not_found && return 1
    [[ $attempt == 4 ]] && break
    log "could not tell whether $name exists in $vault ($(first_error)); retrying in $((attempt * 10)) s"
    sleep $((attempt * 10))
  done
  die "could not tell whether the secret $name exists in Key Vault $vault: $(first_error). Nothing was written; run infra/deploy.sh again"
}

# Writes a secret through ARM from a file holding the value (the value is never on a command line).
put_secret() {
  local vault=$1 name=$2 value_file=$3 content_type=$4
  python3 - "$value_file" "$content_type" "$workdir/secret-body.json" <<'PY'
import json, sys
value = open(sys.argv[1], encoding="utf-8").read().strip()
if not value:
    sys.exit("infra/deploy.sh: refusing to store an empty secret")
with open(sys.argv[3], "w", encoding="utf-8") as f:
    json.dump({"properties": {"value": value, "contentType": sys.argv[2]}}, f)
PY
  az rest --method put -o none \
    --url "https://management.azure.com$(vault_id_of "$vault")/secrets/$name?api-version=$kv_api" \
    --body "@$workdir/secret-body.json"
  rm -f "$workdir/secret-body.json"
}

# A new BROKER_ENCRYPTION_KEYS entry, written to a file (never to stdout).
new_key_file() {
  python3 -c 'import base64, os, sys; open(sys.argv[2], "w").write(sys.argv[1] + ":" + base64.b64encode(os.urandom(32)).decode())' "$1" "$2"
}

restart_settings_reload() {
  # Re-setting the Key Vault reference makes App Service fetch the secret's latest version now.
  local app=$1 vault_uri=$2
  az functionapp config appsettings set -g "$rg" -n "$app" -o none \
    --settings "BROKER_ENCRYPTION_KEYS=@Microsoft.KeyVault(SecretUri=$vault_uri/secrets/$encryption_secret/)"
}

# The vault's URI, from ARM.
vault_uri_of() { az keyvault show -g "$rg" -n "$1" --query properties.vaultUri -o tsv | sed 's:/*$::'; }

# ------------------------------------------------------------------------------------------------
# key rotation

if [[ $rotate == 1 ]]; then
  vault=$(find_vault)
  app=$(az functionapp list -g "$rg" --query "[?starts_with(name, '$prefix-broker-')].name | [0]" -o tsv)
  [[ -n $vault && -n $app ]] || die "no oauth-broker with prefix $prefix found in resource group $rg"
  vault_uri=$(vault_uri_of "$vault")
  log "reading the current encryption keys from $vault"
  az keyvault secret show --vault-name "$vault" -n "$encryption_secret" --query value -o tsv >"$workdir/current" \
    || die "cannot read $encryption_secret: you need Key Vault Secrets Officer on $vault (deploy.sh grants it to the deploying user)"
  [[ -s $workdir/current ]] || die "$encryption_secret in $vault is empty: nothing rotated"
  new_key_file "k$(date -u +%Y%m%d%H%M%S)" "$workdir/new"
  python3 -c 'import sys; open(sys.argv[3], "w").write(open(sys.argv[1]).read().strip() + "," + open(sys.argv[2]).read().strip())' \
    "$workdir/new" "$workdir/current" "$workdir/keys"
  az keyvault secret set --vault-name "$vault" -n "$encryption_secret" --file "$workdir/keys" --encoding utf-8 \
    --content-type "oauth-broker BROKER_ENCRYPTION_KEYS: <key-id>:<base64 of 32 bytes>[,...]; the first encrypts" -o none
  rm -f "$workdir/current" "$workdir/new" "$workdir/keys"
  restart_settings_reload "$app" "$vault_uri"
  log "new key in front: new writes and every refresh use it; older keys still decrypt."
  log "Remove an old key (az keyvault secret set ... with the shorter list) once every grant has been refreshed."
  exit 0
fi

[[ -n $location ]] || die "--location is required (see --help)"
if [[ -n $integrations && ! -f $integrations ]]; then
  die "$integrations does not exist"
fi
if [[ -n $package ]]; then
  [[ -f $package ]] || die "$package does not exist"
elif [[ $skip_package == 0 ]]; then
  [[ -x scripts/package ]] || die "scripts/package is missing"
fi

# ------------------------------------------------------------------------------------------------
# 1. the settings integrations.json refers to (%NAME%), from this shell's environment

log "reading the settings ${integrations:-(no integrations file)} refers to"
python3 - "${integrations:-}" "$workdir/settings.json" <<'PY'
import json, os, re, sys
path, out = sys.argv[1], sys.argv[2]
plain, secret_names, secrets, missing_plain, names = {}, [], {}, [], []
SECRETISH = re.compile(r"SECRET|PASSWORD|TOKEN|KEY", re.I)

def walk(value, field, found):
    if isinstance(value, dict):
        for k, v in value.items():
            walk(v, k, found)
    elif isinstance(value, list):
        for v in value:
            walk(v, field, found)
    elif isinstance(value, str):
        m = re.fullmatch(r"%([^%]+)%", value)
        if m:
            found.append((m.group(1), field))

if path:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    names = sorted(doc.get("integrations", {}))
    found = []
    walk(doc, "", found)
    for name, field in found:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            sys.exit(f"infra/deploy.sh: %{name}% in {path}: setting names must be letters, digits and _")
        if field == "client_secret" or SECRETISH.search(name):
            if name not in secret_names:
                secret_names.append(name)
            if os.environ.get(name):
                secrets[name] = os.environ[name]
        elif os.environ.get(name):
            plain[name] = os.environ[name]
        elif name not in missing_plain:
            missing_plain.append(name)
if missing_plain:
    sys.exit("infra/deploy.sh: set these in the environment first (integrations.json refers to them): "
             + ", ".join(missing_plain))
old = os.umask(0o077)
with open(out, "w") as f:
    json.dump({"plain": plain, "secretNames": secret_names, "secrets": secrets, "integrations": names}, f)
os.umask(old)
PY

# ------------------------------------------------------------------------------------------------
# 2. resource providers, then the region must offer Flex Consumption

# What this script's commands and templates use (Microsoft.Authorization and Microsoft.Resources are
# always registered). Microsoft.App: the Flex VNet integration subnet is delegated to
# Microsoft.App/environments.
providers="Microsoft.Web Microsoft.Storage Microsoft.KeyVault Microsoft.ManagedIdentity Microsoft.OperationalInsights Microsoft.Insights"
[[ $private_network == 1 ]] && providers+=" Microsoft.Network Microsoft.App"
[[ -n $data_factory ]] && providers+=" Microsoft.DataFactory"
for ns in $providers; do
  ensure_provider "$ns"
done

log "checking that $location offers Flex Consumption"
flex_regions=$(az functionapp list-flexconsumption-locations --query "[].name" -o tsv) \
  || die "could not list the Flex Consumption regions (az functionapp list-flexconsumption-locations)"
normalize() { tr '[:upper:]' '[:lower:]' | tr -d ' '; }
wanted=$(normalize <<<"$location")
if ! normalize <<<"$flex_regions" | grep -qx -- "$wanted"; then
  die "region $location does not offer Flex Consumption; pick one of: $(tr '\n' ' ' <<<"$flex_regions")"
fi

# ------------------------------------------------------------------------------------------------
# 3. resource group, Key Vault and encryption key (never regenerated), Data Factory, deploying user

log "resource group $rg in $location"
az group create -n "$rg" -l "$location" -o none

vault=$(find_vault)
[[ $(wc -w <<<"$vault") -le 1 ]] || die "several Key Vaults named kv-$prefix-* in $rg: $(tr '\n' ' ' <<<"$vault")"
if [[ -z $vault ]]; then
  find_deleted_vault >"$workdir/deleted-vault"
  read -r deleted deleted_location <"$workdir/deleted-vault" || true
  if [[ -n ${deleted:-} ]]; then
    log "Key Vault $deleted was deleted (soft-delete keeps it, with the encryption key): recovering it"
    az keyvault recover --name "$deleted" --location "$deleted_location" -o none \
      || die "could not recover the soft-deleted Key Vault $deleted, which holds the encryption key of the stored grants. Recover it (needs Key Vault Contributor on the subscription): az keyvault recover --name $deleted --location $deleted_location   then run infra/deploy.sh again"
    vault=$deleted
  fi
fi

create_key=0 vault_existed=0
if [[ -n $vault ]]; then
  vault_existed=1
  if secret_exists "$vault" "$encryption_secret"; then
    # The key must be readable: a vault whose key cannot be read is never given a new one.
    length=$(az keyvault secret show --vault-name "$vault" -n "$encryption_secret" --query "length(value)" -o tsv 2>"$workdir/az-error") || length=""
    if ! [[ $length =~ ^[0-9]+$ && $length -gt 0 ]]; then
      if grep -q 'ForbiddenByConnection\|Public network access is disabled' "$workdir/az-error" 2>/dev/null; then
        die "Key Vault $vault holds $encryption_secret but refuses this network (it was deployed with --private-network: $(first_error)). Nothing was changed. Run infra/deploy.sh from a machine that reaches the vault's private endpoint (in the virtual network or one peered with it)"
      fi
      die "Key Vault $vault holds $encryption_secret but it cannot be read ($(first_error)). Nothing was changed. Give yourself Key Vault Secrets Officer on the vault (az role assignment create --role \"Key Vault Secrets Officer\" --assignee <your object id> --scope $(vault_id_of "$vault")) and run infra/deploy.sh again"
    fi
    log "keeping the encryption keys already in Key Vault $vault"
  else
    # No key (yet): decided after the deployment, which grants the deploying user the role that
    # lists deleted secrets (a failed first deployment may have created the vault without it).
    create_key=1
  fi
else
  create_key=1
fi

python3 - "$workdir/settings.json" <<'PY' >"$workdir/missing-secrets"
import json, sys
s = json.load(open(sys.argv[1]))
for name in s["secretNames"]:
    if name not in s["secrets"]:
        print(name)
PY
while read -r name; do
  [[ -n $name ]] || continue
  kv_name=$(echo "$name" | tr '[:upper:]_' '[:lower:]-')
  secret_exists "$vault" "$kv_name" || die "set $name in the environment: it is not in Key Vault yet"
done <"$workdir/missing-secrets"

# The deployer gets Key Vault Secrets Officer on the vault (it creates and reads the encryption key).
operator_id=$(deployer_object_id) || die "could not read the signed-in identity's object id from its access token (az account get-access-token)"
case $(az account show --query user.type -o tsv) in
  user) operator_type=User ;;
  *) operator_type=ServicePrincipal ;;  # service principals and managed identities (az login --identity)
esac

adf_principal="" adf_rg="" adf_name="" adf_id=""
if [[ -n $data_factory ]]; then
  [[ $data_factory == */* ]] || die "--data-factory is <resource-group>/<factory-name>"
  adf_rg=${data_factory%%/*} adf_name=${data_factory#*/}
  adf_id=$(az resource show -g "$adf_rg" -n "$adf_name" --resource-type Microsoft.DataFactory/factories --query id -o tsv) \
    || die "Data Factory $data_factory not found"
  adf_principal=$(az resource show --ids "$adf_id" --query identity.principalId -o tsv)
  [[ -n $adf_principal ]] || die "Data Factory $data_factory has no system-assigned managed identity"
fi

# Data Factory's identity as a caller (--adf-identity-access): its object id joins the integration's
# "callers" in the integrations file, which the package ships; the broker reads it at start, so
# nothing about its access outlives the file.
if [[ ${#adf_access[@]} -gt 0 ]]; then
  python3 - "$integrations" "$adf_principal" "${adf_access[@]}" <<'PY' || die "could not add Data Factory's identity to the callers of $integrations"
import json, sys
path, principal, wanted = sys.argv[1], sys.argv[2].lower(), sys.argv[3:]
doc = json.load(open(path, encoding="utf-8"))
integrations = doc.get("integrations", {})
changed = False
for access in wanted:
    name, connection = access.split("/", 1)
    if name not in integrations:
        sys.exit(f"infra/deploy.sh: --adf-identity-access {access}: {path} has no integration {name!r}")
    callers = integrations[name].setdefault("callers", [])
    entry = next((c for c in callers if str(c.get("object_id", "")).lower() == principal), None)
    if entry is None:
        callers.append({"object_id": principal, "connections": [connection],
                        "description": "Azure Data Factory's managed identity (infra/deploy.sh --adf-identity-access)"})
        changed = True
    elif entry.get("connections") != "*" and connection not in entry.get("connections", []):
        entry.setdefault("connections", []).append(connection)
        changed = True
    print(f"==> Data Factory's identity {principal} may get tokens for {name}/{connection}", file=sys.stderr)
if changed:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"==> {path}: callers updated (commit it)", file=sys.stderr)
PY
  if [[ -n $package ]]; then
    # A prebuilt package ships the integrations file it was built with.
    python3 - "$package" "$integrations" <<'PY' || die "$package does not ship the callers of $integrations: build the package again (infra/deploy.sh without --package, or scripts/package --integrations $integrations)"
import json, sys, zipfile
try:
    shipped = json.loads(zipfile.ZipFile(sys.argv[1]).read("integrations.json"))
except (KeyError, zipfile.BadZipFile, ValueError):
    sys.exit(1)
wanted = json.load(open(sys.argv[2], encoding="utf-8"))
strip = lambda d: {n: i.get("callers") for n, i in d.get("integrations", {}).items()}
sys.exit(0 if strip(shipped) == strip(wanted) else 1)
PY
  fi
fi
if [[ ${#adf_access[@]} -gt 0 || -n $entra_audience ]]; then
  entra_tenant=$(az account show --query tenantId -o tsv)
  [[ $entra_tenant =~ ^[0-9a-fA-F-]{36}$ ]] || die "could not read the tenant id (az account show --query tenantId)"
  log "Entra ID callers on: tenant $entra_tenant, audience ${entra_audience:-the client id of the app identity}"
fi

# ------------------------------------------------------------------------------------------------
# 4. infrastructure

# Parameters go through a private file (secure values never appear on a command line).
DEPLOY_PREFIX=$prefix DEPLOY_LOCATION=$location DEPLOY_PUBLIC_URL=$public_url \
  DEPLOY_OPERATOR_ID=$operator_id DEPLOY_OPERATOR_TYPE=$operator_type DEPLOY_PRIVATE_NETWORK=$private_network \
  DEPLOY_MEMORY=$memory DEPLOY_ALERT_EMAIL=$alert_email \
  DEPLOY_ENTRA_TENANT=$entra_tenant DEPLOY_ENTRA_AUDIENCE=$entra_audience \
  python3 - "$workdir/settings.json" "$workdir/params.json" <<'PY'
import json, os, sys
s = json.load(open(sys.argv[1]))
e = os.environ
params = {
    "namePrefix": e["DEPLOY_PREFIX"],
    "location": e["DEPLOY_LOCATION"],
    "integrationSettings": s["plain"],
    "integrationSecretNames": s["secretNames"],
    "integrationSecrets": s["secrets"],
    "publicUrl": e["DEPLOY_PUBLIC_URL"],
    "operatorPrincipalId": e["DEPLOY_OPERATOR_ID"],
    "operatorPrincipalType": e["DEPLOY_OPERATOR_TYPE"],
    "privateNetwork": e["DEPLOY_PRIVATE_NETWORK"] == "1",
    "instanceMemoryMB": int(e["DEPLOY_MEMORY"]),
    "alertEmail": e["DEPLOY_ALERT_EMAIL"],
    "entraTenantId": e["DEPLOY_ENTRA_TENANT"],
    "entraAudience": e["DEPLOY_ENTRA_AUDIENCE"],
}
with open(sys.argv[2], "w") as f:
    json.dump({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
               "contentVersion": "1.0.0.0",
               "parameters": {k: {"value": v} for k, v in params.items()}}, f)
PY
log "deploying infra/main.bicep (a few minutes)"
az deployment group create -g "$rg" -n "$deployment" -f infra/main.bicep -p "@$workdir/params.json" -o none \
  || die "the deployment of infra/main.bicep failed (see above). Running infra/deploy.sh again is safe: the encryption key is kept."
rm -f "$workdir/params.json"

app=$(previous_output functionAppName)
host=$(previous_output functionAppHostName)
public=$(previous_output publicUrl)
redirect=$(previous_output redirectUri)
deployed_vault=$(previous_output keyVaultName)
[[ -n $app && -n $deployed_vault ]] || die "the deployment produced no outputs"
[[ -z $vault || $vault == "$deployed_vault" ]] || die "the template deployed Key Vault $deployed_vault, but $vault holds the encryption key"
vault=$deployed_vault
vault_uri=$(previous_output keyVaultUri)
vault_uri=${vault_uri%/}
identity_principal=$(previous_output identityPrincipalId)
[[ -n $identity_principal ]] || die "the deployment produced no identityPrincipalId output"
# The audience Data Factory asks its token for (authentication MSI, resource): the template's.
broker_audience=$(previous_output brokerAudience)
broker_audience=${broker_audience%%,*}

# Key Vault Secrets User for a principal on exactly these secrets (infra/secret-access.bicep), never on
# the vault. Each secret must exist (a role assignment's scope must).
grant_secret_reads() {
  local who=$1 principal=$2
  shift 2
  python3 - "$vault" "$principal" "$workdir/access-params.json" "$@" <<'PY'
import json, sys
vault, principal, out, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with open(out, "w") as f:
    json.dump({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
               "contentVersion": "1.0.0.0",
               "parameters": {"vaultName": {"value": vault}, "principalId": {"value": principal},
                              "secretNames": {"value": sorted(set(names))}}}, f)
PY
  az deployment group create -g "$rg" -n "$deployment-secret-access-$who" -f infra/secret-access.bicep \
    -p "@$workdir/access-params.json" -o none \
    || die "could not grant $who Key Vault Secrets User on its secrets ($*) in $vault (see above); running infra/deploy.sh again is safe"
  rm -f "$workdir/access-params.json"
}

# Earlier versions gave the app's identity and Data Factory Key Vault Secrets User on the whole vault.
# A role assignment the template no longer declares stays (deployments are incremental), so remove
# those of these principals, exactly at the vault's scope, once their per-secret roles are granted.
revoke_vault_wide_reads() {
  local vault_id id
  vault_id=$(vault_id_of "$vault")
  # No principal or role names: filling them in calls Microsoft Graph (not needed, and not available
  # to every login).
  az role assignment list --scope "$vault_id" --fill-principal-name false --fill-role-definition-name false \
    -o json >"$workdir/vault-roles.json" 2>"$workdir/az-error" \
    || die "could not list the role assignments on Key Vault $vault: $(first_error)"
  python3 - "$workdir/vault-roles.json" "$vault_id" "$@" >"$workdir/vault-roles-stale" <<'PY'
import json, sys
roles, scope, principals = json.load(open(sys.argv[1])) or [], sys.argv[2].lower(), set(sys.argv[3:])
for ra in roles:
    if ((ra.get("scope") or "").lower() == scope and ra.get("principalId") in principals
            and (ra.get("roleDefinitionId") or "").lower().endswith("/4633458b-17de-408a-b874-0445c86b69e6")):
        print(ra["id"])
PY
  while read -r id; do
    [[ -n $id ]] || continue
    log "removing Key Vault Secrets User on the whole vault $vault, granted by an earlier version"
    az role assignment delete --ids "$id" -o none 2>"$workdir/az-error" \
      || die "could not remove the vault-wide role assignment $id: $(first_error). Remove it: az role assignment delete --ids $id"
  done <"$workdir/vault-roles-stale"
  rm -f "$workdir/vault-roles.json" "$workdir/vault-roles-stale"
}

# ------------------------------------------------------------------------------------------------
# 5. the encryption key: created once, only where none exists (outside the template, so no
#    deployment can overwrite it)

if [[ $create_key == 1 && $vault_existed == 1 ]]; then
  # The vault existed without the key: if the key was deleted, recover it rather than make a new one.
  # Listing deleted secrets needs Key Vault Secrets Officer, granted by the deployment above; a new
  # role assignment can take a few minutes to apply.
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if deleted_secret=$(az keyvault secret list-deleted --vault-name "$vault" --query "[?ends_with(id, '/$encryption_secret')].id" -o tsv 2>/dev/null); then
      break
    fi
    [[ $attempt == 10 ]] && die "Key Vault $vault has no $encryption_secret and its deleted secrets cannot be listed, so a deleted key cannot be ruled out: nothing was created. Check that you have Key Vault Secrets Officer on $(vault_id_of "$vault") and run infra/deploy.sh again"
    log "cannot list the deleted secrets of $vault yet (the role may still be applying); retrying in 30 s"
    sleep 30
  done
  if [[ -n $deleted_secret ]]; then
    log "$encryption_secret was deleted from $vault: recovering it"
    az keyvault secret recover --vault-name "$vault" -n "$encryption_secret" -o none \
      || die "could not recover the deleted secret $encryption_secret: az keyvault secret recover --vault-name $vault -n $encryption_secret"
    create_key=0
    restart_settings_reload "$app" "$vault_uri"
  fi
fi
if [[ $create_key == 1 ]]; then
  secret_exists "$vault" "$encryption_secret" \
    && die "$encryption_secret appeared in $vault while this script ran: not touching it; run infra/deploy.sh again"
  log "generating the encryption key (stored only in Key Vault $vault)"
  new_key_file "k$(date -u +%Y%m%d)" "$workdir/encryption-key"
  put_secret "$vault" "$encryption_secret" "$workdir/encryption-key" \
    "oauth-broker BROKER_ENCRYPTION_KEYS: <key-id>:<base64 of 32 bytes>[,...]; the first encrypts"
  rm -f "$workdir/encryption-key"
  # The app may have tried the Key Vault reference before the secret existed: resolve it again.
  restart_settings_reload "$app" "$vault_uri"
fi

# The keys the broker checks itself (BROKER_API_KEY: admin; BROKER_TOKEN_KEYS: Data Factory's token key,
# also its function key below): created once, before the code starts, since its app settings refer to
# them. A Key Vault reference to a missing secret would leave the setting unresolved, which the broker
# refuses at start rather than take as a key.
for key_secret in "$api_key_secret" "$function_key_secret"; do
  if ! secret_exists "$vault" "$key_secret"; then
    log "generating $key_secret (stored only in Key Vault $vault)"
    # Kept in the private work dir for this run's own calls: a data-plane read would fail from
    # outside a private network, while this first write goes through ARM.
    python3 -c 'import secrets, sys; open(sys.argv[1], "w").write(secrets.token_urlsafe(48))' "$workdir/generated-$key_secret"
    case $key_secret in
      "$api_key_secret") what="oauth-broker BROKER_API_KEY: the admin key the broker checks on its admin and token routes" ;;
      *) what="oauth-broker function key for Azure Data Factory (the token functions only; BROKER_TOKEN_KEYS)" ;;
    esac
    put_secret "$vault" "$key_secret" "$workdir/generated-$key_secret" "$what"
  fi
done

# ------------------------------------------------------------------------------------------------
# 6. the broker's identity may read exactly the secrets its app settings refer to (the encryption key
#    and the integrations' client secrets), granted before the code can start

python3 - "$workdir/settings.json" "$encryption_secret" "$api_key_secret" "$function_key_secret" >"$workdir/broker-secrets" <<'PY'
import json, sys
for name in sys.argv[2:]:
    print(name)
for name in json.load(open(sys.argv[1]))["secretNames"]:
    print(name.lower().replace("_", "-"))
PY
broker_secrets=()
while IFS= read -r line; do broker_secrets+=("$line"); done <"$workdir/broker-secrets"
log "granting the app's identity Key Vault Secrets User on ${broker_secrets[*]} (each secret, not the vault)"
grant_secret_reads broker "$identity_principal" "${broker_secrets[@]}"
revoke_vault_wide_reads "$identity_principal"

# ------------------------------------------------------------------------------------------------
# 7. code: upload (One Deploy), retried on 403/409 for up to ~10 minutes, then the deployment's own
#    status is polled until it succeeded or failed (GET /api/deployments/latest, as az functionapp
#    deployment does: Kudu's status 4 is success, 3 failure; azure-cli appservice
#    _check_zip_deployment_status). A 202 only means "accepted": on a re-run the old code keeps
#    answering /api/health while the new deployment runs or fails.

if [[ -z $package ]]; then
  package=dist/oauth-broker.zip
  if [[ $skip_package == 0 ]]; then
    log "building the package"
    if [[ -n $integrations ]]; then
      scripts/package --integrations "$integrations"
    else
      scripts/package --no-integrations
    fi
  fi
fi
[[ -f $package ]] || die "$package is missing"
scm=$(az functionapp show -g "$rg" -n "$app" --query "hostNameSslStates[?hostType=='Repository'].name | [0]" -o tsv)
[[ -n $scm ]] || scm=${app}.scm.azurewebsites.net

# An Entra ID token for the SCM site (basic-auth publishing is off) with the App Service audience, as
# the Azure CLI asks for it for Kudu (ARM-audience tokens for Kudu are being retired), in a header file.
scm_auth_header() {
  local token
  token=$(az account get-access-token --resource https://appservice.azure.com --query accessToken -o tsv 2>"$workdir/az-error") \
    || die "could not get a token for the App Service (Kudu) audience: $(first_error). In Cloud Shell or with an older login, run: az login --scope https://appservice.azure.com/.default"
  printf 'Authorization: Bearer %s\n' "$token" >"$workdir/auth-header"
}

# The deployment GET /api/deployments/latest answers now, as "<id>|<ok|failed|running>|<text>|<log url>"
# ("" when there is none yet). Kudu's DeployResult: status 0-2 pending/building/deploying, 3 failed,
# 4 succeeded; status_text and log_url.
latest_deployment() {
  local code
  code=$(curl -sS -o "$workdir/deployment.json" -w '%{http_code}' --max-time 30 -H "@$workdir/auth-header" \
    "https://$scm/api/deployments/latest" 2>/dev/null) || code=000
  python3 - "$workdir/deployment.json" "$code" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1], encoding="utf-8")) if sys.argv[2] == "200" else {}
except (OSError, ValueError):
    d = {}
if isinstance(d, dict) and d.get("id"):
    status = d.get("status")
    text = " ".join(str(d.get("status_text") or d.get("progress") or "").replace("|", "/").split())[:300]
    state = "ok" if status == 4 else "failed" if status == 3 else "running"
    print(f"{d['id']}|{state}|{text if state != 'running' else f'status {status}: {text}'}|{d.get('log_url') or ''}")
PY
}

scm_auth_header
previous_deployment=$(latest_deployment)
previous_deployment=${previous_deployment%%|*}
log "uploading $package to $app (https://$scm/api/publish)"
waited=0 delay=15 attempt=0
while :; do
  attempt=$((attempt + 1))
  scm_auth_header
  status=$(curl -sS -o "$workdir/upload-answer" -w '%{http_code}' --max-time 600 -X POST \
    -H "@$workdir/auth-header" -H 'Content-Type: application/zip' --data-binary "@$package" \
    "https://$scm/api/publish?RemoteBuild=false&Deployer=oauth-broker-deploy") || status=000
  rm -f "$workdir/auth-header"
  case $status in
    200|202) log "package accepted (HTTP $status)"; break ;;
    403|409|000|429|502|503)
      # 403: the identity's role on the package container has not applied yet; 409: a deployment
      # is still running.
      if (( waited + delay > 600 )); then
        die "the package upload still fails after $attempt attempts (HTTP $status): $(head -c 300 "$workdir/upload-answer" 2>/dev/null)"
      fi
      log "upload answered HTTP $status (attempt $attempt); retrying in $delay s"
      sleep "$delay"
      waited=$((waited + delay))
      delay=$(( delay * 2 > 120 ? 120 : delay * 2 )) ;;
    *) die "the package upload failed (HTTP $status): $(head -c 300 "$workdir/upload-answer" 2>/dev/null)" ;;
  esac
done

log "waiting for the deployment to finish (https://$scm/api/deployments/latest)"
scm_auth_header
outcome=""
for i in $(seq 1 60); do
  # A fresh token every 5 minutes (they live an hour or more).
  (( i % 30 == 0 )) && scm_auth_header
  current=$(latest_deployment)
  if [[ -n $current && ${current%%|*} != "$previous_deployment" ]]; then
    IFS='|' read -r current outcome text log_url <<<"$current"
    case $outcome in
      ok) log "deployment $current succeeded"; break ;;
      failed)
        rm -f "$workdir/auth-header"
        die "the deployment of the package failed: ${text:-no status text}. Log: ${log_url:-https://$scm/api/deployments/$current/log}. The app keeps its previous code; fix the cause and run infra/deploy.sh again" ;;
    esac
  fi
  sleep 10
done
rm -f "$workdir/auth-header"
if [[ $outcome != ok ]]; then
  die "the deployment of the package is still in progress after 10 minutes (${text:-not reported yet}). Log: ${log_url:-https://$scm/api/deployments/latest}. Nothing after the upload was done; run infra/deploy.sh again once it has finished"
fi

# ------------------------------------------------------------------------------------------------
# 8. wait until healthy (role assignments and Key Vault references can take minutes to apply)

healthy() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "https://$host/api/health") == 200 ]]; }
log "waiting for https://$host/api/health"
ok=0
for i in $(seq 1 60); do
  if healthy; then ok=1; break; fi
  if [[ $i == 24 ]]; then
    log "not healthy after 2 minutes: reloading Key Vault references"
    restart_settings_reload "$app" "$vault_uri"
  fi
  sleep 5
done
[[ $ok == 1 ]] || log "WARNING: the broker is not healthy yet; see Application Insights or: az functionapp log tail -g $rg -n $app"

# ------------------------------------------------------------------------------------------------
# 9. keys. Data Factory's key "adf" is a function key on the token functions only
#    (PUT .../sites/<app>/functions/<function>/keys/adf, WebApps_CreateOrUpdateFunctionSecret; body
#    KeyInfo {name, value}): a function key opens only its function, a host key every function
#    (function-keys-how-to). It is generated here (az functionapp keys set/list answer redacted
#    values), stored in Key Vault as broker-function-key, never printed; a re-run keeps it. The admin
#    routes this script calls (consent links, credentials) use the host's own default key, read through
#    ARM (POST .../host/default/listkeys) into a private file and never stored or printed.

app_id=$(az functionapp show -g "$rg" -n "$app" --query id -o tsv)
if [[ -s $workdir/generated-$function_key_secret ]]; then
  mv "$workdir/generated-$function_key_secret" "$workdir/function-key"
elif secret_exists "$vault" "$function_key_secret"; then
  az keyvault secret show --vault-name "$vault" -n "$function_key_secret" --query value -o tsv >"$workdir/function-key" 2>"$workdir/az-error" \
    || die "Key Vault $vault holds $function_key_secret but it cannot be read ($(first_error)); nothing was changed"
fi
if [[ ! -s $workdir/function-key ]]; then
  log "generating the function key for Data Factory"
  python3 -c 'import secrets, sys; open(sys.argv[1], "w").write(secrets.token_urlsafe(48))' "$workdir/function-key"
  store_function_key=1
else
  log "keeping the function key for Data Factory already in Key Vault"
  store_function_key=0
fi
python3 -c 'import json, sys; json.dump({"name": "adf", "value": open(sys.argv[1]).read().strip()}, open(sys.argv[2], "w"))' \
  "$workdir/function-key" "$workdir/key-body.json"
for fn in $token_functions; do
  # The functions exist once the host has synced the new package's triggers: retried briefly.
  for attempt in 1 2 3 4 5 6; do
    if az rest --method put -o none --url "https://management.azure.com$app_id/functions/$fn/keys/adf?api-version=$web_api" \
      --body "@$workdir/key-body.json" 2>"$workdir/az-error"; then
      break
    fi
    [[ $attempt == 6 ]] && die "could not set the function key adf on the function $fn of $app: $(first_error)"
    log "the function $fn does not take its key yet ($(first_error)); retrying in 10 s"
    sleep 10
  done
done
rm -f "$workdir/key-body.json"
if [[ $store_function_key == 1 ]]; then
  put_secret "$vault" "$function_key_secret" "$workdir/function-key" "oauth-broker function key for Azure Data Factory (the token functions only)"
fi
rm -f "$workdir/function-key"

az rest --method post --url "https://management.azure.com$app_id/host/default/listkeys?api-version=$web_api" \
  -o json >"$workdir/host-keys.json" 2>"$workdir/az-error" \
  || die "could not read the host keys of $app through ARM: $(first_error)"
# Earlier versions made "adf" a host key, which opens every function: remove it.
if python3 -c 'import json, sys; sys.exit(0 if "adf" in (json.load(open(sys.argv[1])).get("functionKeys") or {}) else 1)' "$workdir/host-keys.json"; then
  log "removing the host key adf of earlier versions (it opened every function)"
  az rest --method delete -o none --url "https://management.azure.com$app_id/host/default/functionKeys/adf?api-version=$web_api" 2>"$workdir/az-error" \
    || error_is_not_found \
    || die "could not delete the host key adf of $app, which opens every function: $(first_error). Delete it: az functionapp keys delete -g $rg -n $app --key-type functionKeys --key-name adf"
fi
rm -f "$workdir/host-keys.json"
# The admin routes (consent links, credentials) are anonymous at the host and checked by the broker:
# they take BROKER_API_KEY (Key Vault secret broker-api-key), which Data Factory never reads.
admin_key=1
if [[ -s $workdir/generated-$api_key_secret ]]; then
  mv "$workdir/generated-$api_key_secret" "$workdir/api-key"
else
  az keyvault secret show --vault-name "$vault" -n "$api_key_secret" --query value -o tsv >"$workdir/api-key" 2>"$workdir/az-error" \
    || admin_key=0
fi
python3 - "$workdir/api-key" "$workdir/key-header" <<'PY' || admin_key=0
import sys
key = open(sys.argv[1], encoding="utf-8").read().strip()
if not key:
    sys.exit(1)
open(sys.argv[2], "w").write(f"x-functions-key: {key}\n")
PY
rm -f "$workdir/api-key"
[[ $admin_key == 1 ]] || log "WARNING: $api_key_secret cannot be read from $vault ($(first_error)): no consent links or pipeline credentials were created (run infra/deploy.sh again)"

# ------------------------------------------------------------------------------------------------
# 10. consent links (to a private file, not the terminal: a link lets whoever reads it complete the
#     consent, and terminal output lives on in CI logs) and a pipeline credential per integration

cat <<EOT

oauth-broker is deployed: $public  (function app $app, Key Vault $vault)

1. Register this redirect URI in each vendor's app (exactly):
     $redirect
EOT
python3 - "$workdir/settings.json" >"$workdir/integration-names" <<'PY'
import json, sys
for name in json.load(open(sys.argv[1]))["integrations"]:
    print(name)
PY
quote() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
mkdir -p dist
consent_file=$PWD/dist/consent-links.txt
rm -f "$consent_file"
(umask 077 && : >"$consent_file")
chmod 600 "$consent_file"
while read -r name; do
  [[ -n $name && $admin_key == 1 ]] || continue
  path="/api/connections/$(quote "$name")/$(quote "$connection")/consent-link"
  status=$(curl -sS -o "$workdir/link.json" -w '%{http_code}' --max-time 30 -X POST -H "@$workdir/key-header" \
    -H 'Content-Length: 0' "https://$host$path") || status=000
  python3 - "$workdir/link.json" "$name" "$status" "$path" "$connection" >>"$consent_file" <<'PY'
import json, sys
path, name, status, route, connection = sys.argv[1:6]
try:
    link = json.load(open(path, encoding="utf-8"))
    url, expires = link["url"], link["expires_at"]
    if "code=" in url:
        raise ValueError("the answer carries a key")
    print(f"{name}/{connection}: {url}  (expires {expires})")
except (OSError, ValueError, KeyError, TypeError):
    print(f"{name}/{connection}: (no consent link: HTTP {status}; create one later with POST {route} and the admin key, Key Vault secret broker-api-key)")
PY
done <"$workdir/integration-names"
rm -f "$workdir/link.json"
cat <<EOT

2. Consent, per integration (connection id "$connection"; use one id per vendor account, e.g.
   --connection acme): the links are in $consent_file (readable by you only).
   Each carries no function key, is valid 24 hours and is used up by the consent: open it yourself or
   send it to the owner of the vendor account, then delete the file.
EOT
if [[ ! -s $workdir/integration-names ]]; then
  echo "     (no integrations yet: write integrations.json and run infra/deploy.sh again)"
fi

# A pipeline credential per integration for this connection (POST .../credentials), its secret stored
# in Key Vault under infra/names.py's name, for LS_VendorApi_Broker (ADF's REST linked service with the
# broker as its OAuth 2.0 token endpoint) and LS_VendorApi_Proxy (the proxy, the same credential as
# HTTP Basic). Re-runs keep existing credentials. The secret is never
# printed; its client id (not a secret) is kept in the Key Vault secret's content type and printed.
if [[ -s $workdir/integration-names ]]; then
  cat <<EOT

3. Pipeline credentials for Data Factory's REST linked services LS_VendorApi_Broker (token endpoint
   https://$host/api/oauth2/token) and LS_VendorApi_Proxy (HTTP Basic against
   https://$host/api/proxy/<integration>/$connection/); secrets in Key Vault $vault:
EOT
fi
: >"$workdir/adf-secrets"
echo "$function_key_secret" >>"$workdir/adf-secrets"
while read -r name; do
  [[ -n $name ]] || continue
  cred_secret=$(python3 infra/names.py credential-secret "$name" "$connection") || die "no Key Vault name for $name/$connection"
  if secret_exists "$vault" "$cred_secret"; then
    client_id=$(az keyvault secret show --vault-name "$vault" -n "$cred_secret" --query contentType -o tsv 2>/dev/null \
      | sed -n 's/.*client_id=\([^ ;]*\).*/\1/p') || client_id=""
    echo "     $name/$connection: client id ${client_id:-(see $cred_secret in Key Vault)}, secret $cred_secret (kept)"
    echo "$cred_secret" >>"$workdir/adf-secrets"
    continue
  fi
  path="/api/connections/$(quote "$name")/$(quote "$connection")/credentials"
  if [[ $admin_key == 1 ]]; then
    status=$(curl -sS -o "$workdir/credential.json" -w '%{http_code}' --max-time 30 -X POST -H "@$workdir/key-header" \
      -H 'Content-Type: application/json' --data-binary '{"description": "Azure Data Factory (infra/deploy.sh)"}' \
      "https://$host$path") || status=000
  else
    status="(no admin key)"
  fi
  if [[ $status != 201 ]] || ! client_id=$(python3 - "$workdir/credential.json" "$workdir/credential-secret" <<'PY'
import json, sys
c = json.load(open(sys.argv[1], encoding="utf-8"))
if not c.get("client_secret") or not c.get("client_id"):
    sys.exit(1)
open(sys.argv[2], "w", encoding="utf-8").write(c["client_secret"])
print(c["client_id"])
PY
  ); then
    echo "     $name/$connection: (no pipeline credential: HTTP $status; create one later with POST $path and the admin key, Key Vault secret $api_key_secret)"
    rm -f "$workdir/credential.json" "$workdir/credential-secret"
    continue
  fi
  rm -f "$workdir/credential.json"
  put_secret "$vault" "$cred_secret" "$workdir/credential-secret" "oauth-broker pipeline credential client_id=$client_id"
  rm -f "$workdir/credential-secret"
  echo "     $name/$connection: client id $client_id, secret $cred_secret (new)"
  echo "$cred_secret" >>"$workdir/adf-secrets"
done <"$workdir/integration-names"
rm -f "$workdir/key-header"

# ------------------------------------------------------------------------------------------------
# 11. Data Factory assets: rendered into dist/adf (the pipeline's defaults are the first integration,
#     this connection and its credential's secret name), imported when --data-factory is given, and
#     the factory's identity may read its function key and these credentials' secrets, nothing else

first_integration=$(head -n 1 "$workdir/integration-names")
first_integration=${first_integration:-microsoft}
default_secret=$(python3 infra/names.py credential-secret "$first_integration" "$connection") || default_secret=""
rm -rf dist/adf
[[ -n $broker_audience ]] || broker_audience=$(previous_output identityClientId)
python3 - "https://$host" "$vault_uri/" "$first_integration" "$connection" "$default_secret" "$broker_audience" <<'PY'
import json, os, sys
app_url, vault_url, integration, connection, secret, audience = sys.argv[1:7]
fill = {"__FUNCTION_APP_URL__": app_url, "__KEY_VAULT_URL__": vault_url, "__DEFAULT_INTEGRATION__": integration,
        "__DEFAULT_CONNECTION__": connection, "__DEFAULT_CREDENTIAL_SECRET__": secret, "__BROKER_AUDIENCE__": audience}
for root, _dirs, files in os.walk("infra/adf"):
    for f in sorted(files):
        if not f.endswith(".json"):
            continue
        src = os.path.join(root, f)
        text = open(src, encoding="utf-8").read()
        for placeholder, value in fill.items():
            text = text.replace(placeholder, json.dumps(value)[1:-1])
        doc = json.loads(text)
        dst = os.path.join("dist/adf", os.path.relpath(src, "infra/adf"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        json.dump(doc, open(dst, "w", encoding="utf-8"), indent=2)
PY
if [[ -n $data_factory ]]; then
  log "importing dist/adf into Data Factory $data_factory"
  # Linked services (Key Vault first: the others refer to it), then datasets, then pipelines.
  python3 - >"$workdir/adf-order" <<'PY'
import glob, os
for kind, segment in (("linkedService", "linkedservices"), ("dataset", "datasets"), ("pipeline", "pipelines")):
    files = sorted(glob.glob(f"dist/adf/{kind}/*.json"), key=lambda f: ("KeyVault" not in f, f))
    for f in files:
        print(segment, os.path.basename(f)[:-5], f)
PY
  while read -r segment name file; do
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); json.dump({"properties": d["properties"]}, open(sys.argv[2], "w"))' \
      "$file" "$workdir/body.json"
    az rest --method put -o none \
      --url "https://management.azure.com$adf_id/$segment/$name?api-version=2018-06-01" \
      --body "@$workdir/body.json"
    echo "    $segment/$name"
  done <"$workdir/adf-order"
  adf_secrets=()
  while IFS= read -r line; do adf_secrets+=("$line"); done <"$workdir/adf-secrets"
  log "granting Data Factory $data_factory Key Vault Secrets User on ${adf_secrets[*]} (each secret, not the vault)"
  grant_secret_reads data-factory "$adf_principal" "${adf_secrets[@]}"
  revoke_vault_wide_reads "$adf_principal"
fi

# ------------------------------------------------------------------------------------------------
# 12. what to do next

audience_shown=${broker_audience:-"(set when Entra ID callers are on)"}
access_shown=""
[[ ${#adf_access[@]} -gt 0 ]] && access_shown=", done for: ${adf_access[*]}"

cat <<EOT

4. Azure Data Factory: the assets are in dist/adf (function app URL and Key Vault filled in).
   The function key ADF uses is the Key Vault secret "$function_key_secret" in $vault: it opens only
   the token functions (GET /api/token/<integration>/<connection>, POST /api/token).
   ${data_factory:+They were imported into $data_factory, whose identity may read exactly: $(tr '\n' ' ' <"$workdir/adf-secrets")}
   PL_VendorApi_Paged pages through a vendor API with LS_VendorApi_Broker, PL_VendorApi_Proxy_Paged
   through the broker's proxy with LS_VendorApi_Proxy (no token in the factory; each page one request
   of at most 230 s through the Function App); give either the client id and the secret name above.
   PL_BrokerToken_Copy / PL_BrokerToken_Web call GET token/<integration>/<connection>
   and send Authorization: Bearer @{activity('GetToken').output.access_token}.
   A credential for a later connection: run infra/deploy.sh again with --connection <connection>
   (it creates the credential, stores its secret and lets the factory read it).
   PL_BrokerToken_Web_MSI needs no secret at all: its Web activity authenticates with the factory's
   managed identity (resource $audience_shown); the factory must be among the integration's callers
   (--adf-identity-access <integration>/<connection>$access_shown).
EOT
if [[ $private_network == 1 ]]; then
  cat <<EOT

5. Private network: the storage account and the vault accept traffic only through their private
   endpoints in the broker's virtual network (vnet-$prefix-broker-…). Data Factory reads its
   secrets from the vault: give it a managed virtual network with a managed private endpoint to
   $vault (approve it on the vault), or a self-hosted integration runtime in the network. Re-runs of
   infra/deploy.sh must start from a machine that reaches the vault's private endpoint.
EOT
fi
