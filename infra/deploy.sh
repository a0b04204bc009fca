#!/usr/bin/env bash
# Deploys oauth-broker to Azure in one command: resource group, infrastructure (infra/main.bicep:
# Flex Consumption Function App, storage, Key Vault, Application Insights, managed identity and
# roles), the encryption key (created once, never replaced), the code package (scripts/package), a
# function key for Azure Data Factory (kept in Key Vault), and optionally the Data Factory assets of
# infra/adf. Then it prints the redirect URI to register at each vendor, a keyless consent link per
# integration and the client id of each connection's pipeline credential.
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
#                           an existing Data Factory: its managed identity may read the function key,
#                           and the linked services, datasets and pipelines of infra/adf are imported
#   --connection <id>       connection id of the printed consent links and of the pipeline credential
#                           created per integration for Data Factory's REST linked service, its secret
#                           stored in Key Vault as broker-cred-<integration>-<id> (default: default)
#   --memory <MB>           Flex Consumption instance memory: 512, 2048 (default) or 4096
#   --alert-email <address> e-mail this address when a connection needs a new consent or an
#                           integration is misconfigured (an action group and a log alert rule on the
#                           broker's event lines in Application Insights; infra/alerts.bicep)
#   --package <zip>         deploy this package as it is (no build)
#   --skip-package          deploy dist/oauth-broker.zip as it is (no build)
#   --rotate-encryption-key put a new encryption key in front of the current ones (needs Key Vault
#                           Secrets Officer, which the deploying user gets) and reload the app
#
# Needs: Azure CLI >= 2.60.0 (logged in: az login), python3, curl (>= 7.55), and for the package
# Rust + scripts/package's tools.
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
rg="" location="" prefix="" subscription="" public_url="" data_factory="" connection=default
integrations="" skip_package=0 rotate=0 memory=2048 package="" alert_email=""
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
    --memory) memory=${2:?}; shift 2 ;;
    --alert-email) alert_email=${2:?}; shift 2 ;;
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

# A soft-deleted vault of this resource group and prefix: "<name> <location>", or "".
find_deleted_vault() {
  az keyvault list-deleted --resource-type vault -o json 2>/dev/null \
    | python3 -c '
import json, sys
rg, prefix = sys.argv[1].lower(), sys.argv[2]
for v in json.load(sys.stdin) or []:
    p = v.get("properties") or {}
    if v.get("name", "").startswith(f"kv-{prefix}-") and f"/resourcegroups/{rg}/" in (p.get("vaultId") or "").lower():
        print(v["name"], p.get("location") or "")
        break
' "$rg" "$prefix"
}

vault_id_of() { echo "/subscriptions/$(az account show --query id -o tsv)/resourceGroups/$rg/providers/Microsoft.KeyVault/vaults/$1"; }

# Whether a Key Vault secret exists, asked through ARM (needs no data-plane role).
secret_exists() {
  local vault=$1 name=$2
  [[ -n $vault ]] && az resource show -g "$rg" --namespace Microsoft.KeyVault --parent "vaults/$vault" \
    --resource-type secrets -n "$name" --query id -o tsv >/dev/null 2>&1
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
# 2. the region must offer Flex Consumption

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
  read -r deleted deleted_location <<<"$(find_deleted_vault)" || true
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
    length=$(az keyvault secret show --vault-name "$vault" -n "$encryption_secret" --query "length(value)" -o tsv 2>/dev/null) || length=""
    [[ $length =~ ^[0-9]+$ && $length -gt 0 ]] \
      || die "Key Vault $vault holds $encryption_secret but it cannot be read. Nothing was changed. Give yourself Key Vault Secrets Officer on the vault (az role assignment create --role \"Key Vault Secrets Officer\" --assignee <your object id> --scope $(vault_id_of "$vault")) and run infra/deploy.sh again"
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

operator_id="" operator_type=User
if operator_id=$(az ad signed-in-user show --query id -o tsv 2>/dev/null) && [[ -n $operator_id ]]; then
  operator_type=User
elif [[ $(az account show --query user.type -o tsv) == servicePrincipal ]]; then
  operator_id=$(az ad sp show --id "$(az account show --query user.name -o tsv)" --query id -o tsv 2>/dev/null || true)
  operator_type=ServicePrincipal
fi

adf_principal="" adf_rg="" adf_name="" adf_id=""
if [[ -n $data_factory ]]; then
  [[ $data_factory == */* ]] || die "--data-factory is <resource-group>/<factory-name>"
  adf_rg=${data_factory%%/*} adf_name=${data_factory#*/}
  adf_id=$(az resource show -g "$adf_rg" -n "$adf_name" --resource-type Microsoft.DataFactory/factories --query id -o tsv) \
    || die "Data Factory $data_factory not found"
  adf_principal=$(az resource show --ids "$adf_id" --query identity.principalId -o tsv)
  [[ -n $adf_principal ]] || die "Data Factory $data_factory has no system-assigned managed identity"
fi

# ------------------------------------------------------------------------------------------------
# 4. infrastructure

# Parameters go through a private file (secure values never appear on a command line).
DEPLOY_PREFIX=$prefix DEPLOY_LOCATION=$location DEPLOY_PUBLIC_URL=$public_url \
  DEPLOY_OPERATOR_ID=$operator_id DEPLOY_OPERATOR_TYPE=$operator_type DEPLOY_ADF_PRINCIPAL=$adf_principal \
  DEPLOY_MEMORY=$memory DEPLOY_ALERT_EMAIL=$alert_email \
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
    "dataFactoryPrincipalId": e["DEPLOY_ADF_PRINCIPAL"],
    "instanceMemoryMB": int(e["DEPLOY_MEMORY"]),
    "alertEmail": e["DEPLOY_ALERT_EMAIL"],
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

# ------------------------------------------------------------------------------------------------
# 6. code: upload (One Deploy), retried on 403/409 for up to ~10 minutes; no post-deployment checks
#    here (the health wait below is the check)

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
log "uploading $package to $app (https://$scm/api/publish)"
waited=0 delay=15 attempt=0
while :; do
  attempt=$((attempt + 1))
  # An Entra ID token for the SCM site (basic-auth publishing is off), in a header file.
  token=$(az account get-access-token --resource https://management.azure.com/ --query accessToken -o tsv)
  printf 'Authorization: Bearer %s\n' "$token" >"$workdir/auth-header"
  unset token
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

# ------------------------------------------------------------------------------------------------
# 7. wait until healthy (role assignments and Key Vault references can take minutes to apply)

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
# 8. the function key "adf" for Data Factory: generated here (az functionapp keys set/list answer
#    redacted values), set on the app and stored in Key Vault, never printed. A re-run keeps it.

app_id=$(az functionapp show -g "$rg" -n "$app" --query id -o tsv)
if secret_exists "$vault" "$function_key_secret"; then
  az keyvault secret show --vault-name "$vault" -n "$function_key_secret" --query value -o tsv >"$workdir/function-key" 2>/dev/null \
    || : >"$workdir/function-key"
fi
if [[ ! -s $workdir/function-key ]]; then
  log "generating the function key for Data Factory"
  python3 -c 'import secrets, sys; open(sys.argv[1], "w").write(secrets.token_urlsafe(48))' "$workdir/function-key"
  store_function_key=1
else
  log "keeping the function key for Data Factory already in Key Vault"
  store_function_key=0
fi
python3 -c 'import json, sys; json.dump({"properties": {"name": "adf", "value": open(sys.argv[1]).read().strip()}}, open(sys.argv[2], "w"))' \
  "$workdir/function-key" "$workdir/key-body.json"
az rest --method put -o none --url "https://management.azure.com$app_id/host/default/functionKeys/adf?api-version=$web_api" \
  --body "@$workdir/key-body.json" || die "could not set the function key adf on $app"
rm -f "$workdir/key-body.json"
if [[ $store_function_key == 1 ]]; then
  put_secret "$vault" "$function_key_secret" "$workdir/function-key" "oauth-broker function key for Azure Data Factory"
fi
printf 'x-functions-key: %s\n' "$(cat "$workdir/function-key")" >"$workdir/key-header"
rm -f "$workdir/function-key"

# ------------------------------------------------------------------------------------------------
# 9. Data Factory assets: rendered into dist/adf, imported when --data-factory is given

rm -rf dist/adf
python3 - "https://$host" "$vault_uri/" "$function_key_secret" <<'PY'
import json, os, sys
app_url, vault_url, secret = sys.argv[1:4]
for root, _dirs, files in os.walk("infra/adf"):
    for f in sorted(files):
        if not f.endswith(".json"):
            continue
        src = os.path.join(root, f)
        text = open(src, encoding="utf-8").read()
        text = text.replace("__FUNCTION_APP_URL__", app_url).replace("__KEY_VAULT_URL__", vault_url)
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
fi

# ------------------------------------------------------------------------------------------------
# 10. what to do next

cat <<EOT

oauth-broker is deployed: $public  (function app $app, Key Vault $vault)

1. Register this redirect URI in each vendor's app (exactly):
     $redirect

2. Consent, per integration (connection id "$connection"; use one id per vendor account, e.g.
   --connection acme). Each link carries no function key, is valid 24 hours and is used up by the
   consent: open it yourself or send it to the owner of the vendor account.
EOT
python3 - "$workdir/settings.json" >"$workdir/integration-names" <<'PY'
import json, sys
for name in json.load(open(sys.argv[1]))["integrations"]:
    print(name)
PY
if [[ ! -s $workdir/integration-names ]]; then
  echo "     (no integrations yet: write integrations.json and run infra/deploy.sh again)"
fi
while read -r name; do
  [[ -n $name ]] || continue
  path="/api/connections/$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$name")/$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$connection")/consent-link"
  status=$(curl -sS -o "$workdir/link.json" -w '%{http_code}' --max-time 30 -X POST -H "@$workdir/key-header" \
    -H 'Content-Length: 0' "https://$host$path") || status=000
  python3 - "$workdir/link.json" "$name" "$status" "$path" <<'PY'
import json, sys
path, name, status, route = sys.argv[1:5]
try:
    link = json.load(open(path, encoding="utf-8"))
    url, expires = link["url"], link["expires_at"]
    if "code=" in url:
        raise ValueError("the answer carries a key")
    print(f"     {name}: {url}  (expires {expires})")
except (OSError, ValueError, KeyError, TypeError):
    print(f"     {name}: (no consent link: HTTP {status}; create one later with POST {route} and the function key)")
PY
done <"$workdir/integration-names"

# A pipeline credential per printed connection (POST .../credentials), its secret stored in Key Vault
# as broker-cred-<integration>-<connection> for LS_VendorApi_Broker (ADF's REST linked service with the
# broker as its OAuth 2.0 token endpoint) and LS_VendorApi_Proxy (the same credential as HTTP Basic on
# the proxy). Re-runs keep existing credentials. The secret is never printed;
# its client id (not a secret) is kept in the Key Vault secret's content type and printed.
if [[ -s $workdir/integration-names ]]; then
  cat <<EOT

3. Pipeline credentials for Data Factory's REST linked services LS_VendorApi_Broker (token endpoint
   https://$host/api/oauth2/token) and LS_VendorApi_Proxy (HTTP Basic against the proxy
   https://$host/api/proxy/<integration>/<connection>/); secret in Key Vault $vault:
EOT
fi
while read -r name; do
  [[ -n $name ]] || continue
  cred_secret="broker-cred-$(tr -c 'A-Za-z0-9\n' '-' <<<"$name")-$(tr -c 'A-Za-z0-9\n' '-' <<<"$connection")"
  if secret_exists "$vault" "$cred_secret"; then
    client_id=$(az keyvault secret show --vault-name "$vault" -n "$cred_secret" --query contentType -o tsv 2>/dev/null \
      | sed -n 's/.*client_id=\([^ ;]*\).*/\1/p') || client_id=""
    echo "     $name/$connection: client id ${client_id:-(see $cred_secret in Key Vault)}, secret $cred_secret (kept)"
    continue
  fi
  path="/api/connections/$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$name")/$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$connection")/credentials"
  status=$(curl -sS -o "$workdir/credential.json" -w '%{http_code}' --max-time 30 -X POST -H "@$workdir/key-header" \
    -H 'Content-Type: application/json' --data-binary '{"description": "Azure Data Factory (infra/deploy.sh)"}' \
    "https://$host$path") || status=000
  if [[ $status != 201 ]] || ! client_id=$(python3 - "$workdir/credential.json" "$workdir/credential-secret" <<'PY'
import json, sys
c = json.load(open(sys.argv[1], encoding="utf-8"))
if not c.get("client_secret") or not c.get("client_id"):
    sys.exit(1)
open(sys.argv[2], "w", encoding="utf-8").write(c["client_secret"])
print(c["client_id"])
PY
  ); then
    echo "     $name/$connection: (no pipeline credential: HTTP $status; create one later with POST $path and the function key)"
    rm -f "$workdir/credential.json" "$workdir/credential-secret"
    continue
  fi
  rm -f "$workdir/credential.json"
  put_secret "$vault" "$cred_secret" "$workdir/credential-secret" "oauth-broker pipeline credential client_id=$client_id"
  rm -f "$workdir/credential-secret"
  echo "     $name/$connection: client id $client_id, secret $cred_secret (new)"
done <"$workdir/integration-names"
rm -f "$workdir/key-header" "$workdir/link.json"

cat <<EOT

4. Azure Data Factory: the assets are in dist/adf (function app URL and Key Vault filled in).
   The function key ADF uses is the Key Vault secret "$function_key_secret" in $vault.
   ${data_factory:+They were imported into $data_factory.}
   PL_VendorApi_Paged pages through a vendor API with LS_VendorApi_Broker, PL_VendorApi_Proxy_Paged
   through the broker's proxy with LS_VendorApi_Proxy (give either the client id above; the proxy
   needs the integration's api_base_url); PL_BrokerToken_Copy / PL_BrokerToken_Web call GET token/<integration>/<connection> and send
   Authorization: Bearer @{activity('GetToken').output.access_token}.
   A credential for a later connection: POST https://$host/api/connections/<integration>/<connection>/credentials
   with the function key, then store its client_secret in Key Vault as broker-cred-<integration>-<connection>
   (or run infra/deploy.sh again with --connection <connection>).
EOT
