#!/usr/bin/env bash
# Deploys oauth-broker to Azure in one command: resource group, infrastructure (infra/main.bicep:
# Flex Consumption Function App, storage, Key Vault, Application Insights, managed identity and
# roles), the code package (scripts/package), a function key for Azure Data Factory (kept in Key
# Vault), and optionally the Data Factory assets of infra/adf. Then it prints the redirect URI to
# register at each vendor and a consent URL per integration.
#
# Usage:
#   infra/deploy.sh -g <resource-group> -l <location> -p <name-prefix> [options]
#   infra/deploy.sh -g <resource-group> --rotate-encryption-key
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
#   --connection <id>       connection id used in the printed consent URLs (default: default)
#   --skip-package          deploy dist/oauth-broker.zip as it is (no build)
#   --rotate-encryption-key put a new encryption key in front of the current ones (needs Key Vault
#                           Secrets Officer, which the deploying user gets) and reload the app
#
# Needs: az (logged in: az login), python3, curl, and for the package Rust + scripts/package's tools.
set -euo pipefail
cd "$(dirname "$0")/.."

deployment=oauth-broker
rg="" location="" prefix="" subscription="" public_url="" data_factory="" connection=default
integrations="" skip_package=0 rotate=0
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
    --skip-package) skip_package=1; shift ;;
    --rotate-encryption-key) rotate=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[[ -n $rg ]] || die "--resource-group is required (see --help)"
for tool in az python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
az account show -o none 2>/dev/null || die "not logged in to Azure: run az login"
if [[ -n $subscription ]]; then
  az account set --subscription "$subscription"
fi

workdir=$(mktemp -d)
chmod 700 "$workdir"
trap 'rm -rf "$workdir"' EXIT

# Outputs of the last deployment of main.bicep in this resource group ("" when none).
previous_output() {
  az deployment group show -g "$rg" -n "$deployment" --query "properties.outputs.$1.value" -o tsv 2>/dev/null || true
}

# Whether a Key Vault secret exists, asked through ARM (needs no data-plane role).
secret_exists() {
  local vault=$1 name=$2
  [[ -n $vault ]] && az resource show -g "$rg" --namespace Microsoft.KeyVault --parent "vaults/$vault" \
    --resource-type secrets -n "$name" --query id -o tsv >/dev/null 2>&1
}

new_key() { python3 -c 'import base64, os, sys; print(sys.argv[1] + ":" + base64.b64encode(os.urandom(32)).decode())' "$1"; }

restart_settings_reload() {
  # Re-setting the Key Vault reference makes App Service fetch the secret's latest version now.
  local app=$1 vault_uri=$2 secret=$3
  az functionapp config appsettings set -g "$rg" -n "$app" -o none \
    --settings "BROKER_ENCRYPTION_KEYS=@Microsoft.KeyVault(SecretUri=$vault_uri/secrets/$secret/)"
}

# ------------------------------------------------------------------------------------------------
# key rotation

if [[ $rotate == 1 ]]; then
  vault=$(previous_output keyVaultName)
  vault_uri=$(previous_output keyVaultUri)
  app=$(previous_output functionAppName)
  secret=$(previous_output encryptionKeysSecretName)
  [[ -n $vault && -n $app ]] || die "no deployment '$deployment' found in resource group $rg"
  log "reading the current encryption keys from $vault"
  current=$(az keyvault secret show --vault-name "$vault" -n "$secret" --query value -o tsv) \
    || die "cannot read $secret: you need Key Vault Secrets Officer on $vault (deploy.sh grants it to the deploying user)"
  umask 077
  printf '%s,%s' "$(new_key "k$(date -u +%Y%m%d%H%M%S)")" "$current" >"$workdir/keys"
  az keyvault secret set --vault-name "$vault" -n "$secret" --file "$workdir/keys" --encoding utf-8 \
    --content-type "oauth-broker BROKER_ENCRYPTION_KEYS: <key-id>:<base64 of 32 bytes>[,...]; the first encrypts" -o none
  restart_settings_reload "$app" "$vault_uri" "$secret"
  log "new key in front: new writes and every refresh use it; older keys still decrypt."
  log "Remove an old key (az keyvault secret set ... with the shorter list) once every grant has been refreshed."
  exit 0
fi

[[ -n $location ]] || die "--location is required (see --help)"
[[ $prefix =~ ^[a-z][a-z0-9]{2,10}$ ]] || die "--prefix must be 3-11 lowercase letters and digits, starting with a letter"
if [[ -n $integrations && ! -f $integrations ]]; then
  die "$integrations does not exist"
fi
[[ -x scripts/package ]] || die "scripts/package is missing"

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
# 2. resource group, encryption key, Data Factory identity, the deploying user

log "resource group $rg in $location"
az group create -n "$rg" -l "$location" -o none

vault=$(previous_output keyVaultName)
encryption_keys=""
if secret_exists "$vault" broker-encryption-keys; then
  log "keeping the encryption keys already in Key Vault $vault"
else
  log "generating an encryption key (stored only in Key Vault)"
  encryption_keys=$(new_key "k$(date -u +%Y%m%d)")
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

adf_principal="" adf_rg="" adf_name=""
if [[ -n $data_factory ]]; then
  [[ $data_factory == */* ]] || die "--data-factory is <resource-group>/<factory-name>"
  adf_rg=${data_factory%%/*} adf_name=${data_factory#*/}
  adf_id=$(az resource show -g "$adf_rg" -n "$adf_name" --resource-type Microsoft.DataFactory/factories --query id -o tsv) \
    || die "Data Factory $data_factory not found"
  adf_principal=$(az resource show --ids "$adf_id" --query identity.principalId -o tsv)
  [[ -n $adf_principal ]] || die "Data Factory $data_factory has no system-assigned managed identity"
fi

# ------------------------------------------------------------------------------------------------
# 3. infrastructure

# Parameters go through a private file (secure values never appear on a command line).
DEPLOY_PREFIX=$prefix DEPLOY_LOCATION=$location DEPLOY_PUBLIC_URL=$public_url \
  DEPLOY_OPERATOR_ID=$operator_id DEPLOY_OPERATOR_TYPE=$operator_type DEPLOY_ADF_PRINCIPAL=$adf_principal \
  DEPLOY_ENCRYPTION_KEYS=$encryption_keys \
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
    "encryptionKeys": e["DEPLOY_ENCRYPTION_KEYS"],
    "publicUrl": e["DEPLOY_PUBLIC_URL"],
    "operatorPrincipalId": e["DEPLOY_OPERATOR_ID"],
    "operatorPrincipalType": e["DEPLOY_OPERATOR_TYPE"],
    "dataFactoryPrincipalId": e["DEPLOY_ADF_PRINCIPAL"],
}
old = os.umask(0o077)
with open(sys.argv[2], "w") as f:
    json.dump({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
               "contentVersion": "1.0.0.0",
               "parameters": {k: {"value": v} for k, v in params.items()}}, f)
os.umask(old)
PY
log "deploying infra/main.bicep (a few minutes)"
az deployment group create -g "$rg" -n "$deployment" -f infra/main.bicep -p "@$workdir/params.json" -o none
rm -f "$workdir/params.json"

app=$(previous_output functionAppName)
host=$(previous_output functionAppHostName)
public=$(previous_output publicUrl)
redirect=$(previous_output redirectUri)
vault=$(previous_output keyVaultName)
vault_uri=$(previous_output keyVaultUri)
function_key_secret=$(previous_output functionKeySecretName)
[[ -n $app && -n $vault ]] || die "the deployment produced no outputs"

# ------------------------------------------------------------------------------------------------
# 4. code

if [[ $skip_package == 0 ]]; then
  log "building the package"
  if [[ -n $integrations ]]; then
    scripts/package --integrations "$integrations"
  else
    scripts/package --no-integrations
  fi
fi
[[ -f dist/oauth-broker.zip ]] || die "dist/oauth-broker.zip is missing"
log "deploying dist/oauth-broker.zip to $app"
for attempt in 1 2 3 4 5; do
  # The identity's role on the deployment container can take a few minutes to apply.
  if az functionapp deployment source config-zip -g "$rg" -n "$app" --src dist/oauth-broker.zip -o none; then
    break
  fi
  [[ $attempt == 5 ]] && die "zip deployment failed"
  log "zip deployment failed (attempt $attempt); retrying in 30 s"
  sleep 30
done

# ------------------------------------------------------------------------------------------------
# 5. wait until healthy (role assignments and Key Vault references can take minutes to apply)

healthy() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "https://$host/api/health") == 200 ]]; }
log "waiting for https://$host/api/health"
ok=0
for i in $(seq 1 60); do
  if healthy; then ok=1; break; fi
  if [[ $i == 24 ]]; then
    log "not healthy after 2 minutes: reloading Key Vault references"
    restart_settings_reload "$app" "$vault_uri" "$(previous_output encryptionKeysSecretName)"
  fi
  sleep 5
done
[[ $ok == 1 ]] || log "WARNING: the broker is not healthy yet; see Application Insights or: az functionapp log tail -g $rg -n $app"

# ------------------------------------------------------------------------------------------------
# 6. function keys: "adf" for Data Factory (stored in Key Vault), "default" for consent links

adf_key=$(az functionapp keys list -g "$rg" -n "$app" --query functionKeys.adf -o tsv 2>/dev/null || true)
if [[ -z $adf_key ]]; then
  adf_key=$(az functionapp keys set -g "$rg" -n "$app" --key-type functionKeys --key-name adf --query value -o tsv)
fi
vault_id=$(az resource show -g "$rg" -n "$vault" --resource-type Microsoft.KeyVault/vaults --query id -o tsv)
python3 -c 'import json, sys; json.dump({"properties": {"value": sys.stdin.read().strip(), "contentType": "oauth-broker function key for Azure Data Factory"}}, open(sys.argv[1], "w"))' \
  "$workdir/key.json" <<<"$adf_key"
az rest --method put -o none \
  --url "https://management.azure.com$vault_id/secrets/$function_key_secret?api-version=2023-07-01" \
  --body "@$workdir/key.json"
rm -f "$workdir/key.json"
default_key=$(az functionapp keys list -g "$rg" -n "$app" --query functionKeys.default -o tsv)

# ------------------------------------------------------------------------------------------------
# 7. Data Factory assets: rendered into dist/adf, imported when --data-factory is given

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
# 8. what to do next

cat <<EOF

oauth-broker is deployed: $public  (function app $app, Key Vault $vault)

1. Register this redirect URI in each vendor's app (exactly):
     $redirect

2. Consent, per integration (connection id "$connection"; use one id per vendor account, e.g.
   --connection acme). Open the first link yourself, or send the second (no function key in it,
   valid 24 hours, used up by the consent) to the owner of the vendor account:
EOF
python3 - "$workdir/settings.json" "https://$host" "$public" "$connection" "$default_key" <<'PY'
import json, sys, urllib.error, urllib.parse, urllib.request
s = json.load(open(sys.argv[1]))
host, public, connection, key = sys.argv[2:6]
if not s["integrations"]:
    print("     (no integrations yet: write integrations.json and run infra/deploy.sh again)")
for name in s["integrations"]:
    q = urllib.parse.urlencode({"connection": connection, "code": key})
    print(f"     {name}: {public}/api/auth/start/{name}?{q}")
    path = f"/api/connections/{urllib.parse.quote(name)}/{urllib.parse.quote(connection)}/consent-link"
    req = urllib.request.Request(host + path, data=b"", method="POST", headers={"x-functions-key": key})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            link = json.load(r)
        print(f"     {name}: {link['url']}  (expires {link['expires_at']})")
    except (urllib.error.URLError, ValueError, KeyError) as e:
        print(f"     {name}: (no consent link: {e}; create one later with POST {path})")
PY
cat <<EOF

3. Azure Data Factory: the assets are in dist/adf (function app URL and Key Vault filled in).
   The function key ADF uses is the Key Vault secret "$function_key_secret" in $vault.
   ${data_factory:+They were imported into $data_factory.}
   Pipelines call GET token/<integration>/<connection> and send
   Authorization: Bearer @{activity('GetToken').output.access_token}.
EOF
