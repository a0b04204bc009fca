#!/usr/bin/env python3
"""Offline checks of the deployment files (run by scripts/check-infra, which provides the parsers).

No Bicep CLI can run here, so:
- every infra/**/*.bicep must parse with two independent offline parsers: tree-sitter-bicep (the
  grammar) and pycep-parser (which also gives the structure the next checks read);
- infra/main.bicep must set every setting the broker reads in Azure (names found in src/**/*.rs), or
  the setting must be listed below with the reason it is not set; every BROKER_* setting it sets must
  be one the broker reads; every %NAME% in functions/*/function.json must be set; and the Function App
  must be what the design says (Flex Consumption, runtime `custom`, no FUNCTIONS_WORKER_RUNTIME app
  setting, HTTPS only, TLS 1.2, SCM basic-auth publishing off, identity-based storage with shared keys off, Key Vault in RBAC
  mode referenced from app settings, the identity's roles);
- every resource of infra/main.bicep must have a model in Azure's management SDKs for its type and API
  version (ARM_MODELS), every property it sets must exist in that model (at any depth, flattened
  `properties.*` included), every property read from a resource (`storage.properties.primaryEndpoints.blob`)
  must exist in that type's model, and every resourceId()/subscriptionResourceId() must name a type the
  template declares or Azure defines (REFERENCED_AZURE_TYPES, checked against the SDK too);
- the Flex Consumption rules (FLEX_REJECTS, each with its source) and the key-safety rules hold: no
  encryption key in the template, purge protection, the app depends on its secrets;
- infra/adf/**/*.json must be valid JSON whose references resolve, whose Azure Function activities call
  a route the broker serves (functions/*/function.json, with the method it allows), with secure output
  and retries, whose POST bodies use only fields the token route accepts, and whose downstream
  activities read only fields the token route answers (`access_token` as a Bearer header);
- infra/deploy.sh must pass `bash -n` (and shellcheck, when installed).

Usage: python tests/check_infra.py   (exit status 1 on any failure)
"""

import glob
import importlib
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checklib import check, failures  # noqa: E402
from check_alerts import check_alerts  # noqa: E402
from check_least_privilege import check_least_privilege  # noqa: E402


def rel(path):
    return os.path.relpath(path, ROOT)


# Settings the broker reads that the template deliberately does not set.
NOT_SET_BY_TEMPLATE = {
    "FUNCTIONS_CUSTOMHANDLER_PORT": "set by the Functions host when it starts the handler",
    "WEBSITE_HOSTNAME": "set by the platform (BROKER_PUBLIC_URL is set explicitly anyway)",
    "IDENTITY_ENDPOINT": "set by the platform for the managed identity",
    "IDENTITY_HEADER": "set by the platform for the managed identity",
    "MSI_ENDPOINT": "set by older platforms for the managed identity (api-version 2017-09-01 fallback)",
    "MSI_SECRET": "set by older platforms for the managed identity (api-version 2017-09-01 fallback)",
    "BROKER_PORT": "standalone mode only",
    "BROKER_PROXY_TIMEOUT_SECS": "tuning; the default (120 s) stays under the 230 s the Azure front end allows",
    "BROKER_PROXY_RETRY_MAX_SECS": "tuning; the default (30 s) is right",
    "BROKER_PROXY_REWRITE_MAX_BYTES": "tuning; the default (16 MiB) is right",
    "BROKER_BIND": "standalone mode only",
    "BROKER_ENTRA_AUTHORITY": "the public cloud's https://login.microsoftonline.com is the default; sovereign clouds set it",
    "BROKER_SWEEP_INTERVAL_SECS": "standalone mode only (the timer function drives the sweep)",
    "BROKER_STORAGE": "a connection string carries an account key: the template uses BROKER_STORAGE__* (identity), and BROKER_STORAGE would override it",
    "BROKER_STORAGE__credential": "optional; managedidentity is the only value",
    "AzureWebJobsStorage": "a connection string carries an account key: host storage is identity-based (AzureWebJobsStorage__*)",
    "AzureWebJobsStorage__tableServiceUri": "only a fallback of the broker's when BROKER_STORAGE__* is unset; the template sets BROKER_STORAGE__*",
    "BROKER_REFRESH_LEASE_SECS": "tuning; the default is right",
    "BROKER_UPSTREAM_TIMEOUT_SECS": "tuning; the default is right",
    "BROKER_REFRESH_COOLDOWN_SECS": "tuning; the default is right",
    "BROKER_SWEEP_CONCURRENCY": "tuning; the default is right",
    "BROKER_SWEEP_BUDGET_SECS": "tuning; the default is right",
    "BROKER_MAX_CONNECTIONS": "tuning; the default is right (the host forwards every request over its own pool)",
    "BROKER_CONSENT_LINK_TTL_SECS": "tuning; the default (24 h) is right",
    "BROKER_WEBHOOK_URL": "the operator's receivers, set as an app setting after deployment (docs/operations.md); alerts need none",
    "BROKER_WEBHOOK_SECRET": "set with BROKER_WEBHOOK_URL (a Key Vault reference); only the operator knows the receivers",
    "BROKER_WEBHOOK_SECRETS": "a secret per receiver, set with BROKER_WEBHOOK_URL (Key Vault references); only the operator knows the receivers",
    "BROKER_TRUSTED_PROXIES": "standalone mode only (under the host the front end's client-ip header names the client)",
    "BROKER_MAX_CONNECTIONS_PER_SOURCE": "standalone mode only (under the host every connection comes from the host)",
    "BROKER_MIN_FORCED_REFRESH_SECS": "tuning; the default (60 s) is right",
    "BROKER_WEBHOOK_RETRY_SECS": "tuning; the default (10 s, doubling) is right",
    "BROKER_REFRESH_FAILING_SECS": "tuning; the default (6 h) is right",
    "BROKER_LOG_FORMAT": "the default is right: JSON when stdout is not a terminal, as under the Functions host",
}

# App settings names the broker (or its platform) reads, as string literals in the source.
SETTING_LITERAL = re.compile(
    r'"((?:BROKER|FUNCTIONS|WEBSITE|IDENTITY|MSI)_[A-Z0-9_]*[A-Z0-9](?:__[A-Za-z]+)?|AzureWebJobsStorage(?:__[A-Za-z]+)?)"'
)

ROLE_IDS = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
}


def settings_read_by_broker():
    names = set()
    for path in glob.glob(os.path.join(ROOT, "src", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # Ignore unit tests: they name settings only to exercise them.
        text = text.split("#[cfg(test)]")[0]
        names.update(SETTING_LITERAL.findall(text))
    # The host reads %NAME% in function.json (e.g. the timer's schedule) from the app settings.
    for fj in glob.glob(os.path.join(ROOT, "functions", "*", "function.json")):
        with open(fj, encoding="utf-8") as f:
            names.update(re.findall(r"%([^%]+)%", f.read()))
    return names


# --- Bicep ---------------------------------------------------------------------------------------


def parse_bicep_files():
    import tree_sitter
    import tree_sitter_bicep
    from pycep import BicepParser

    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))
    parsed = {}
    files = sorted(glob.glob(os.path.join(ROOT, "infra", "**", "*.bicep"), recursive=True))
    check(bool(files), "infra/ has Bicep files")
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        tree = parser.parse(data)
        if tree.root_node.has_error:
            bad = first_error(tree.root_node)
            where = f" at line {bad.start_point[0] + 1}, column {bad.start_point[1] + 1}" if bad else ""
            check(False, f"{rel(path)} parses with tree-sitter-bicep (syntax error{where})")
        else:
            check(True, f"{rel(path)} parses with tree-sitter-bicep")
        try:
            parsed[path] = BicepParser().parse(text=data.decode("utf-8"))
            check(True, f"{rel(path)} parses with pycep-parser")
        except Exception as e:  # Lark raises several exception types
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            check(False, f"{rel(path)} parses with pycep-parser ({first_line})")
    return parsed


def first_error(node):
    if node.type == "ERROR" or node.is_missing:
        return node
    for child in node.children:
        found = first_error(child)
        if found is not None:
            return found
    return None


def resources_of(doc, rtype):
    """name → body of the resources of a type (conditions and loops unwrapped)."""
    out = {}
    for n, r in doc.get("resources", {}).items():
        if r.get("type", "").lower() == rtype.lower():
            body = r["config"]
            while isinstance(body, dict) and "config" in body and ("condition" in body or "loop_type" in body):
                body = body["config"]
            out[n] = body
    return out


def app_settings(doc, site):
    """(literal name → value, dynamic loops) of the site's siteConfig.appSettings."""
    value = site["properties"]["siteConfig"]["appSettings"]
    parts = []
    if isinstance(value, dict) and value.get("function", {}).get("type") == "concat":
        parts = list(value["function"]["parameters"].values())
    else:
        parts = [value]
    literal, loops = {}, []
    for part in parts:
        if isinstance(part, str) and part in doc.get("variables", {}):
            part = doc["variables"][part]["value"]
        if isinstance(part, list):
            for item in part:
                literal[item["name"]] = item["value"]
        elif isinstance(part, dict) and "loop_type" in part:
            loops.append(part["loop_type"])
        else:
            check(False, f"appSettings part {part!r} is understood by the check")
    return literal, loops


def property_path(value):
    """`a.b.c` of a pycep property accessor (or the plain string)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "operator" in value and value["operator"]["type"] == "property_accessor":
        ops = value["operator"]["operands"]
        return property_path(ops["operand_1"]) + "." + property_path(ops["operand_2"])
    return json.dumps(value)


def check_main_template(doc, read):
    sites = resources_of(doc, "Microsoft.Web/sites")
    if not check(len(sites) == 1, "main.bicep has one Function App"):
        return
    (site_name, site), = sites.items()
    cfg = site
    props = cfg["properties"]
    check("functionapp" in cfg["kind"] and "linux" in cfg["kind"], "the Function App is a Linux function app")
    plans = resources_of(doc, "Microsoft.Web/serverfarms")
    check(any(p["sku"].get("tier") == "FlexConsumption" for p in plans.values()),
          "the plan is Flex Consumption (Linux Consumption retires 2028-09-30)")
    runtime = props.get("functionAppConfig", {}).get("runtime", {})
    check(runtime == {"name": "custom", "version": "1.0"}, "functionAppConfig.runtime is custom 1.0 (custom handler)")
    deployment = props.get("functionAppConfig", {}).get("deployment", {}).get("storage", {})
    check(deployment.get("type") == "blobContainer"
          and deployment.get("authentication", {}).get("type") in ("UserAssignedIdentity", "SystemAssignedIdentity"),
          "the deployment package container is reached with the managed identity")
    check(props.get("httpsOnly") is True, "httpsOnly is true")
    site_config = props.get("siteConfig", {})
    check(site_config.get("minTlsVersion") == "1.2", "minTlsVersion is 1.2")
    check("ftpsState" not in site_config, "siteConfig.ftpsState is not set (ARM error 51021 on Flex Consumption)")

    literal, loops = app_settings(doc, site)
    names = set(literal)
    for name in sorted(read):
        if name in names:
            check(True, f"the template sets {name}")
        elif name in NOT_SET_BY_TEMPLATE:
            print(f"ok   the template leaves {name} unset: {NOT_SET_BY_TEMPLATE[name]}")
        else:
            check(False, f"the template sets {name}, which the broker reads (or list it in NOT_SET_BY_TEMPLATE with a reason)")
    for name in sorted(n for n in names if n.startswith("BROKER_")):
        check(name in read, f"{name}, set by the template, is a setting the broker reads")
    for name in sorted(n for n in NOT_SET_BY_TEMPLATE if n not in read):
        check(False, f"NOT_SET_BY_TEMPLATE lists {name}, which the broker no longer reads: remove it")
    for name in ("AzureWebJobsStorage", "BROKER_STORAGE", "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION",
                 "WEBSITE_RUN_FROM_PACKAGE", "APPINSIGHTS_INSTRUMENTATIONKEY"):
        check(name not in names, f"the template does not set {name} (a key in settings, or not allowed on Flex)")
    for fj in sorted(glob.glob(os.path.join(ROOT, "functions", "*", "function.json"))):
        for ref in re.findall(r"%([^%]+)%", open(fj, encoding="utf-8").read()):
            check(ref in names, f"the template sets {ref} ({rel(fj)} refers to it)")
    kv = literal.get("BROKER_ENCRYPTION_KEYS", "")
    check(isinstance(kv, str) and kv.startswith("@Microsoft.KeyVault(SecretUri="),
          "BROKER_ENCRYPTION_KEYS is a Key Vault reference")
    check(literal.get("AzureWebJobsStorage__credential") == "managedidentity",
          "host storage is identity-based (AzureWebJobsStorage__credential = managedidentity)")
    check(literal.get("BROKER_REFRESH_SCHEDULE") == "refreshSchedule"
          and doc["parameters"]["refreshSchedule"].get("default") == "0 */5 * * * *",
          "BROKER_REFRESH_SCHEDULE defaults to 0 */5 * * * *")
    loop_sources = sorted(str(l["detail"].get("array_name")) + " " + json.dumps(l["detail"], default=str) for l in loops)
    check(any("integrationSettings" in s for s in loop_sources) and any("integrationSecretNames" in s for s in loop_sources),
          "app settings include the integrations' settings and Key Vault references to their secrets")
    params = doc.get("parameters", {})
    for p in ("namePrefix", "location", "integrationSettings", "integrationSecretNames", "integrationSecrets"):
        check(p in params, f"main.bicep has the parameter {p}")
    for p in ("integrationSecrets",):
        if p in params:
            check(any("secure" in json.dumps(d) for d in params[p].get("decorators", [])), f"{p} is @secure()")

    storages = resources_of(doc, "Microsoft.Storage/storageAccounts")
    check(all(s["properties"].get("allowSharedKeyAccess") is False for s in storages.values()) and storages,
          "the storage account refuses shared keys")
    tables = resources_of(doc, "Microsoft.Storage/storageAccounts/tableServices/tables")
    check(bool(tables), "the template creates the broker's table")
    vaults = resources_of(doc, "Microsoft.KeyVault/vaults")
    check(bool(vaults) and all(v["properties"].get("enableRbacAuthorization") is True for v in vaults.values()),
          "Key Vault is in RBAC mode")
    insights = resources_of(doc, "Microsoft.Insights/components")
    workspaces = resources_of(doc, "Microsoft.OperationalInsights/workspaces")
    check(bool(insights) and bool(workspaces), "Application Insights with a Log Analytics workspace")

    roles_var = doc.get("variables", {}).get("roles", {}).get("value", {})
    granted = set()
    for ra in resources_of(doc, "Microsoft.Authorization/roleAssignments").values():
        rprops = ra["properties"]
        role_ref = rprops["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        role = roles_var.get(property_path(role_ref).split(".")[-1], property_path(role_ref))
        principal = property_path(rprops["principalId"])
        granted.add((role, ra.get("scope"), principal.split(".")[0]))
    identity = next(iter(resources_of(doc, "Microsoft.ManagedIdentity/userAssignedIdentities")), None)
    # Key Vault Secrets User is granted per secret by infra/secret-access.bicep (check_least_privilege).
    for role, scope in (("b7e6dc6d-f1e8-4753-8033-0f276bb0955b", next(iter(storages), None)),
                        ("0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3", next(iter(tables), None))):
        check((role, scope, identity) in granted, f"the app's identity has {ROLE_IDS[role]} on {scope}")
    return doc


# --- Azure's own models (azure-mgmt-* SDKs) --------------------------------------------------------

# (type, API version) of every resource main.bicep declares → (SDK models module, model of the body
# ARM accepts, model of what ARM answers, which reads like `storage.properties.primaryEndpoints` use).
# Multi-API SDKs name the version in the module; single-API SDKs are checked in SINGLE_API_SDKS.
ARM_MODELS = {
    ("Microsoft.ManagedIdentity/userAssignedIdentities", "2023-01-31"):
        ("azure.mgmt.msi.v2023_01_31.models", "Identity", "Identity"),
    ("Microsoft.OperationalInsights/workspaces", "2025-07-01"):
        ("azure.mgmt.loganalytics.models", "Workspace", "Workspace"),
    ("Microsoft.Insights/components", "2020-02-02"):
        ("azure.mgmt.applicationinsights.v2020_02_02.models", "ApplicationInsightsComponent", "ApplicationInsightsComponent"),
    ("Microsoft.Storage/storageAccounts", "2023-05-01"):
        ("azure.mgmt.storage.v2023_05_01.models", "StorageAccountCreateParameters", "StorageAccount"),
    ("Microsoft.Storage/storageAccounts/blobServices", "2023-05-01"):
        ("azure.mgmt.storage.v2023_05_01.models", "BlobServiceProperties", "BlobServiceProperties"),
    ("Microsoft.Storage/storageAccounts/blobServices/containers", "2023-05-01"):
        ("azure.mgmt.storage.v2023_05_01.models", "BlobContainer", "BlobContainer"),
    ("Microsoft.Storage/storageAccounts/tableServices", "2023-05-01"):
        ("azure.mgmt.storage.v2023_05_01.models", "TableServiceProperties", "TableServiceProperties"),
    ("Microsoft.Storage/storageAccounts/tableServices/tables", "2023-05-01"):
        ("azure.mgmt.storage.v2023_05_01.models", "Table", "Table"),
    ("Microsoft.KeyVault/vaults", "2023-07-01"):
        ("azure.mgmt.keyvault.v2023_07_01.models", "VaultCreateOrUpdateParameters", "Vault"),
    ("Microsoft.KeyVault/vaults/secrets", "2023-07-01"):
        ("azure.mgmt.keyvault.v2023_07_01.models", "SecretCreateOrUpdateParameters", "Secret"),
    ("Microsoft.Authorization/roleAssignments", "2022-04-01"):
        ("azure.mgmt.authorization.v2022_04_01.models", "RoleAssignmentCreateParameters", "RoleAssignment"),
    ("Microsoft.Web/serverfarms", "2024-04-01"):
        ("azure.mgmt.web.v2024_04_01.models", "AppServicePlan", "AppServicePlan"),
    ("Microsoft.Web/sites", "2024-04-01"):
        ("azure.mgmt.web.v2024_04_01.models", "Site", "Site"),
    ("Microsoft.Web/sites/basicPublishingCredentialsPolicies", "2024-04-01"):
        ("azure.mgmt.web.v2024_04_01.models", "CsmPublishingCredentialsPoliciesEntity", "CsmPublishingCredentialsPoliciesEntity"),
    # --private-network (azure-mgmt-network 29.0.0: 2024-07-01; azure-mgmt-privatedns 1.2.0: 2024-06-01).
    ("Microsoft.Network/virtualNetworks", "2024-07-01"):
        ("azure.mgmt.network.models", "VirtualNetwork", "VirtualNetwork"),
    ("Microsoft.Network/privateEndpoints", "2024-07-01"):
        ("azure.mgmt.network.models", "PrivateEndpoint", "PrivateEndpoint"),
    ("Microsoft.Network/privateEndpoints/privateDnsZoneGroups", "2024-07-01"):
        ("azure.mgmt.network.models", "PrivateDnsZoneGroup", "PrivateDnsZoneGroup"),
    ("Microsoft.Network/privateDnsZones", "2024-06-01"):
        ("azure.mgmt.privatedns.models", "PrivateZone", "PrivateZone"),
    ("Microsoft.Network/privateDnsZones/virtualNetworkLinks", "2024-06-01"):
        ("azure.mgmt.privatedns.models", "VirtualNetworkLink", "VirtualNetworkLink"),
}

# SDKs generated for one API version: the version their client sends must be the template's.
SINGLE_API_SDKS = {"azure.mgmt.loganalytics.models": "azure.mgmt.loganalytics._configuration",
                   "azure.mgmt.privatedns.models": "azure.mgmt.privatedns._configuration",
                   # azure-mgmt-network names the version in each operation: the version (nearly) all send.
                   "azure.mgmt.network.models": "azure.mgmt.network.operations._operations"}

# Types that resourceId()/subscriptionResourceId() name without the template declaring them: Azure's,
# each with the SDK model that defines it.
REFERENCED_AZURE_TYPES = {
    "Microsoft.Authorization/roleDefinitions": ("azure.mgmt.authorization.v2022_04_01.models", "RoleDefinition"),
    # The subnets main.bicep declares inside its virtual network (privateNetwork).
    "Microsoft.Network/virtualNetworks/subnets": ("azure.mgmt.network.models", "Subnet"),
    "Microsoft.Network/virtualNetworks": ("azure.mgmt.network.models", "VirtualNetwork"),
}

RESOURCE_ID_FUNCTIONS = {"resource_id", "subscription_resource_id", "extension_resource_id",
                         "tenant_resource_id", "management_group_resource_id"}

# What Flex Consumption rejects or ignores, with where each rule comes from.
FLEX_REJECTS = {
    # ARM error 51021 "site configuration property (Site.SiteConfig.FtpsState) for Flex Consumption
    # sites is invalid" (West Europe and other newer regions): microsoft/azure-pipelines-tasks#21032,
    # Azure/terraform-azurerm-avm-res-web-site #345 and #360.
    "siteConfig.ftpsState": "ARM error 51021 on Flex (azure-pipelines-tasks#21032, avm-res-web-site #345/#360)",
    # Flex Consumption plan docs (flex-consumption-plan, "Considerations"): no Always On (scale to zero
    # is the plan's model); the Flex deployment reference lists alwaysOn among unsupported siteConfig.
    "siteConfig.alwaysOn": "not supported on Flex Consumption (flex-consumption-plan docs)",
    # functionAppConfig.runtime replaces linuxFxVersion on Flex (flex-consumption-how-to, ARM/Bicep
    # samples in Azure-Samples/azure-functions-flex-consumption-samples IaC/bicep).
    "siteConfig.linuxFxVersion": "replaced by functionAppConfig.runtime on Flex (flex samples, flex-consumption-how-to)",
}
FLEX_REJECTED_SETTINGS = {
    # functions-app-settings reference: each marked as not supported/used on Flex Consumption; the
    # values live in functionAppConfig (runtime, deployment storage) or do not apply.
    "FUNCTIONS_WORKER_RUNTIME": "functionAppConfig.runtime.name replaces it (functions-app-settings: not supported on Flex)",
    "FUNCTIONS_EXTENSION_VERSION": "the platform sets the host version on Flex (functions-app-settings: not supported on Flex)",
    "WEBSITE_RUN_FROM_PACKAGE": "functionAppConfig.deployment.storage replaces it (functions-app-settings: not supported on Flex)",
    "WEBSITE_CONTENTSHARE": "no Azure Files content share on Flex (functions-app-settings: not supported on Flex)",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING": "no Azure Files content share on Flex (functions-app-settings: not supported on Flex)",
    "SCM_DO_BUILD_DURING_DEPLOYMENT": "remote build is a One Deploy parameter on Flex (functions-app-settings: not supported on Flex)",
}


def unwrap(body):
    while isinstance(body, dict) and "config" in body and ("condition" in body or "loop_type" in body):
        body = body["config"]
    return body


def accessor_paths(node, out):
    """Every `a.b.c` property accessor in a pycep tree, and every `${a.b.c}` in interpolated strings."""
    if isinstance(node, dict):
        op = node.get("operator")
        if isinstance(op, dict) and op.get("type") == "property_accessor":
            out.add(property_path(node))
            return
        for v in node.values():
            accessor_paths(v, out)
    elif isinstance(node, list):
        for v in node:
            accessor_paths(v, out)
    elif isinstance(node, str):
        out.update(re.findall(r"\$\{\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)\s*\}", node))


def resource_id_types(node, out):
    if isinstance(node, dict):
        fn = node.get("function")
        if isinstance(fn, dict) and fn.get("type") in RESOURCE_ID_FUNCTIONS:
            out.append(fn.get("parameters", {}).get("resource_type"))
        for v in node.values():
            resource_id_types(v, out)
    elif isinstance(node, list):
        for v in node:
            resource_id_types(v, out)


def check_against_models(doc, reads=True):
    import arm_models

    modules = {}

    def models_of(module):
        if module not in modules:
            try:
                modules[module] = arm_models.Models(module)
            except ImportError as e:
                check(False, f"the SDK models module {module} imports ({e})")
                modules[module] = None
        return modules[module]

    for module, config in sorted(SINGLE_API_SDKS.items()):
        versions = {v for (_t, v), (m, _w, _r) in ARM_MODELS.items() if m == module}
        text = open(importlib.import_module(config).__file__, encoding="utf-8").read()
        sent = re.findall(r'kwargs\.pop\("api_version", "([^"]+)"\)', text)
        if not sent:
            # Operation-level versions (azure-mgmt-network): the one nearly every operation sends.
            import collections

            counts = collections.Counter(re.findall(r'_params\.pop\("api-version", "([^"]+)"\)', text))
            top, n = counts.most_common(1)[0] if counts else (None, 0)
            sent = [top] if n > 0.95 * sum(counts.values()) else sorted(counts)
        check(set(sent) == versions and len(versions) == 1,
              f"{module.rsplit('.', 1)[0]} sends api-version {sorted(set(sent))}, the template's {sorted(versions)}")

    # Self-test: the checker itself rejects what ARM would (so a pass below means something).
    web = models_of("azure.mgmt.web.v2024_04_01.models")
    if web is not None:
        for body, why in (({"properties": {"httpsOnlyy": True}}, "a misspelt property"),
                          ({"properties": {"siteConfig": {"minTlsVersio": "1.2"}}}, "a misspelt nested property"),
                          ({"properties": {"functionAppConfig": {"runtime": {"name": "custom", "flavour": "x"}}}},
                           "a property the API version does not have"),
                          ({"properties": {"httpsOnly": "yes", "siteConfig": {"http20Enabled": 1}}}, "a wrong literal type")):
            errors = []
            arm_models.check_object(web, web.cls("Site"), body, "selftest", errors, envelope=arm_models.BICEP_ENVELOPE)
            if why == "a wrong literal type":
                errors = [e for e in errors if "http20Enabled" in e]
            check(bool(errors), f"the model check rejects {why} (self-test)")
        errors = []
        arm_models.check_read(web, web.cls("Site"), ["properties", "defaultHostname"], "selftest", errors)
        check(bool(errors), "the model check rejects a read of a property the model lacks (self-test)")

    declared = {r["type"] for r in doc.get("resources", {}).values()}
    for symbol, r in sorted(doc.get("resources", {}).items()):
        key = (r["type"], r.get("api_version"))
        entry = ARM_MODELS.get(key)
        where = f"{symbol} ({r['type']}@{r.get('api_version')})"
        if not check(entry is not None, f"{where} has a model in a pinned SDK (ARM_MODELS)"):
            continue
        module, write_name, _read = entry
        if "._configuration" not in module and module not in SINGLE_API_SDKS:
            check(r["api_version"].replace("-", "_") in module, f"{where}: the model module {module} is that API version")
        models = models_of(module)
        if models is None:
            continue
        cls = models.cls(write_name)
        if not check(cls is not None, f"{where}: {module} has {write_name}"):
            continue
        errors = []
        arm_models.check_object(models, cls, unwrap(r["config"]), symbol, errors, envelope=arm_models.BICEP_ENVELOPE)
        check(not errors, f"{where}: every property exists in {write_name}@{r['api_version']}"
              + ("".join(f"\n       {e}" for e in errors)))

    # Reads of resource properties, anywhere in the template.
    paths = set()
    accessor_paths({k: v for k, v in doc.items() if k in ("resources", "variables", "outputs")}, paths)
    resources = doc.get("resources", {})
    read_checks = 0
    for path in sorted(paths):
        root, *steps = path.split(".")
        if root not in resources or not steps or (len(steps) == 1 and steps[0] in ("id", "name", "type", "apiVersion")):
            continue
        entry = ARM_MODELS.get((resources[root]["type"], resources[root].get("api_version")))
        models = entry and models_of(entry[0])
        if not models:
            continue
        errors = []
        arm_models.check_read(models, models.cls(entry[2]), steps, path, errors)
        read_checks += 1
        check(not errors, f"the template reads {path}, which {entry[2]} has" + "".join(f"\n       {e}" for e in errors))
    check(read_checks > 0 or not reads, "the template's reads of resource properties were found and checked")

    # resourceId()/subscriptionResourceId() name declared types or Azure's own.
    types = []
    resource_id_types(doc.get("resources", {}), types)
    resource_id_types(doc.get("variables", {}), types)
    for t in sorted(set(map(str, types))):
        if t in declared:
            check(True, f"resourceId type {t} is declared by the template")
        elif t in REFERENCED_AZURE_TYPES:
            module, name = REFERENCED_AZURE_TYPES[t]
            models = models_of(module)
            check(models is not None and models.cls(name) is not None, f"resourceId type {t} is Azure's ({name} in {module})")
        else:
            check(False, f"resourceId type {t} is neither declared by the template nor listed in REFERENCED_AZURE_TYPES")


def check_flex_and_key_safety(doc):
    sites = resources_of(doc, "Microsoft.Web/sites")
    for name, site in sites.items():
        site_config = site.get("properties", {}).get("siteConfig", {})
        for path, why in FLEX_REJECTS.items():
            key = path.split(".", 1)[1]
            check(key not in site_config, f"{name}: {path} is not set ({why})")
        literal, _loops = app_settings(doc, site)
        for setting, why in FLEX_REJECTED_SETTINGS.items():
            check(setting not in literal, f"{name}: app setting {setting} is not set ({why})")
        params = doc.get("parameters", {})
        mem = params.get("instanceMemoryMB", {})
        check(mem.get("default") == 2048, "instanceMemoryMB defaults to 2048 (Flex's documented default)")
        depends = set(site.get("dependsOn", []))
        secret_resources = set(resources_of(doc, "Microsoft.KeyVault/vaults/secrets"))
        check(secret_resources <= depends,
              f"{name} depends on every Key Vault secret it refers to ({sorted(secret_resources - depends)} missing)")
        # The app's Key Vault references need Secrets User on each secret before the code starts:
        # deploy.sh grants it (secret-access.bicep) after the key exists and before the upload.
        deploy = open(os.path.join(ROOT, "infra", "deploy.sh"), encoding="utf-8").read()
        grant = deploy.find('grant_secret_reads broker "$identity_principal"')
        upload = deploy.find("/api/publish?")
        check(0 < grant < upload and deploy.find("put_secret \"$vault\" \"$encryption_secret\"") < grant,
              f"deploy.sh grants {name}'s identity Secrets User on its secrets after creating the key and before the upload")
    policies = resources_of(doc, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    check(any(p.get("name") == "scm" and p.get("properties", {}).get("allow") is False for p in policies.values()),
          "SCM basic-auth publishing credentials are off (basicPublishingCredentialsPolicies 'scm', allow: false)")
    check(not any(p.get("name") == "ftp" for p in policies.values()), "no 'ftp' publishing policy (FTP is not offered on Flex)")
    for name, v in resources_of(doc, "Microsoft.KeyVault/vaults").items():
        props = v.get("properties", {})
        check(props.get("enablePurgeProtection") is True, f"{name} has purge protection (the encryption key cannot be purged)")
        check(props.get("enableSoftDelete") is not False, f"{name} keeps soft delete on")
    # The encryption key is created by deploy.sh once; the template must never write it.
    secret_name = doc.get("variables", {}).get("encryptionKeysSecretName", {}).get("value")
    for name, sec in resources_of(doc, "Microsoft.KeyVault/vaults/secrets").items():
        check(sec.get("name") not in ("encryptionKeysSecretName", secret_name),
              f"the secret resource {name} is not the encryption key (deploy.sh creates it once; ARM would overwrite it)")
    check("encryptionKeys" not in doc.get("parameters", {}), "main.bicep takes no encryption key parameter")


# --- ADF -----------------------------------------------------------------------------------------


def broker_routes():
    routes = []
    for fj in glob.glob(os.path.join(ROOT, "functions", "*", "function.json")):
        doc = json.load(open(fj, encoding="utf-8"))
        for b in doc["bindings"]:
            if b.get("type") == "httpTrigger":
                route = re.sub(r"\{[^}]*\}", "{}", b.get("route", os.path.basename(os.path.dirname(fj))))
                routes.append((route, [m.upper() for m in b.get("methods", [])], b.get("authLevel", "function")))
    return routes


def expression_text(value):
    if isinstance(value, dict) and value.get("type") == "Expression":
        return value["value"]
    return value


def route_template(function_name):
    """`token/{}/{}` from "@concat('token/', x, '/', y)", or the literal name."""
    text = expression_text(function_name)
    if not isinstance(text, str):
        return None
    m = re.fullmatch(r"@concat\((.*)\)", text.strip())
    if not m:
        return None if text.startswith("@") else text.split("?")[0]
    out = ""
    for arg in re.findall(r"'(?:[^']|'')*'|[^,]+", m.group(1)):
        arg = arg.strip()
        out += arg[1:-1].replace("''", "'") if arg.startswith("'") else "{}"
    return out.split("?")[0]


def token_route_contract():
    text = open(os.path.join(ROOT, "src", "routes", "token.rs"), encoding="utf-8").read()
    body = re.search(r"struct PostBody \{(.*?)\n\}", text, re.S)
    fields = set(re.findall(r"^\s*(\w+):", body.group(1), re.M)) if body else set()
    answer = set(re.findall(r'"(\w+)":', text))
    # The answer may also be a #[derive(Serialize)] struct (TokenBody): its fields are the JSON keys.
    for m in re.finditer(r"#\[derive\([^)]*Serialize[^)]*\)\]\s*(?:pub\s+)?struct \w+(?:<[^>]*>)? \{(.*?)\n\}", text, re.S):
        answer |= set(re.findall(r"^\s*(?:pub\s+)?(\w+):", m.group(1), re.M))
    return fields, answer


def check_adf(template_doc):
    files = sorted(glob.glob(os.path.join(ROOT, "infra", "adf", "**", "*.json"), recursive=True))
    check(bool(files), "infra/adf has Data Factory assets")
    docs = {}
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                docs[path] = json.load(f)
            check(True, f"{rel(path)} is valid JSON")
        except ValueError as e:
            check(False, f"{rel(path)} is valid JSON ({e})")
    kinds = {"linkedService": {}, "dataset": {}, "pipeline": {}}
    for path, doc in docs.items():
        kind = os.path.basename(os.path.dirname(path))
        name = os.path.basename(path)[:-5]
        check(kind in kinds, f"{rel(path)} is in linkedService/, dataset/ or pipeline/ (ADF's repository layout)")
        check(doc.get("name") == name and "properties" in doc, f"{rel(path)} is {{name: {name}, properties}}")
        kinds.setdefault(kind, {})[name] = doc

    # References resolve.
    def refs(node):
        if isinstance(node, dict):
            if "referenceName" in node and "type" in node:
                yield node["type"], node["referenceName"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for kind, items in kinds.items():
        for name, doc in items.items():
            for rtype, rname in refs(doc):
                target = {"LinkedServiceReference": "linkedService", "DatasetReference": "dataset"}.get(rtype)
                if target:
                    check(rname in kinds[target], f"{kind}/{name} refers to {target} {rname}, which exists")

    # The broker linked service: key from Key Vault, under the secret name the template names.
    functions = [d for d in kinds["linkedService"].values() if d["properties"]["type"] == "AzureFunction"]
    if check(len(functions) == 1, "one AzureFunction linked service (the broker)"):
        key = functions[0]["properties"]["typeProperties"].get("functionKey", {})
        secret_var = (template_doc or {}).get("variables", {}).get("functionKeySecretName", {}).get("value")
        check(key.get("type") == "AzureKeyVaultSecret", "the function key comes from Key Vault")
        check(key.get("secretName") == secret_var,
              f"the function key's secret name ({key.get('secretName')}) is the template's functionKeySecretName ({secret_var})")
    deploy = open(os.path.join(ROOT, "infra", "deploy.sh"), encoding="utf-8").read()
    placeholders = set(re.findall(r"__[A-Z_]+__", "".join(json.dumps(d) for d in docs.values())))
    for ph in sorted(placeholders):
        check(ph in deploy, f"deploy.sh fills in the placeholder {ph}")
    variables = (template_doc or {}).get("variables", {})
    for shell_name, var in (("function_key_secret", "functionKeySecretName"), ("encryption_secret", "encryptionKeysSecretName")):
        m = re.search(rf"^{shell_name}=(\S+)$", deploy, re.M)
        want = variables.get(var, {}).get("value")
        check(m is not None and m.group(1) == want,
              f"deploy.sh's {shell_name} ({m.group(1) if m else None}) is the template's {var} ({want})")

    # Linked services that use oauth-broker as their OAuth 2.0 client-credentials token endpoint.
    broker_token_services = {}
    for name, doc in kinds["linkedService"].items():
        tp = doc["properties"].get("typeProperties", {})
        if doc["properties"].get("type") == "RestService" and tp.get("authenticationType") == "OAuth2ClientCredential":
            broker_token_services[name] = tp
    check(bool(broker_token_services), "a REST linked service uses oauth-broker as its OAuth2ClientCredential token endpoint")
    served = {r[0]: r for r in broker_routes()}
    for name, tp in broker_token_services.items():
        check(tp.get("tokenEndpoint") == "__FUNCTION_APP_URL__/api/oauth2/token",
              f"{name}.tokenEndpoint is the broker's /api/oauth2/token (got {tp.get('tokenEndpoint')})")
        route = served.get("oauth2/token")
        check(route is not None and "POST" in route[1] and route[2] == "anonymous",
              f"{name}: the broker serves oauth2/token, takes POST and is anonymous (clients authenticate themselves)")
        secret = tp.get("clientSecret", {})
        check(secret.get("type") == "AzureKeyVaultSecret"
              and expression_text(secret.get("secretName")) == "@linkedService().credentialSecretName",
              f"{name}.clientSecret is the Key Vault secret its credentialSecretName parameter names "
              "(the name infra/names.py computes; ADF expressions cannot)")
        check("__DEFAULT_CREDENTIAL_SECRET__" in json.dumps(kinds["pipeline"])
              and "python3 infra/names.py credential-secret" in deploy,
              f"deploy.sh renders infra/names.py's secret name into the pipeline that uses {name}")
    via_broker_datasets = {n for n, d in kinds["dataset"].items()
                           if d["properties"].get("linkedServiceName", {}).get("referenceName") in broker_token_services}

    # Linked services that call the vendor through oauth-broker's proxy (HTTP Basic, pipeline credential).
    proxy_services = {}
    for name, doc in kinds["linkedService"].items():
        tp = doc["properties"].get("typeProperties", {})
        if doc["properties"].get("type") == "RestService" and "/api/proxy/" in str(tp.get("url")):
            proxy_services[name] = tp
    check(bool(proxy_services), "a REST linked service calls the vendor through the broker's proxy")
    for name, tp in proxy_services.items():
        url = tp.get("url", "")
        check(url.startswith("__FUNCTION_APP_URL__/api/proxy/") and url.endswith("/"),
              f"{name}.url is https://<app>/api/proxy/<integration>/<connection>/ (got {url})")
        route = served.get("proxy/{}/{}/{}")
        check(route is not None and {"GET", "POST"} <= set(route[1]) and route[2] == "anonymous",
              f"{name}: the broker serves proxy/{{}}/{{}}/{{}}, takes GET and POST and is anonymous (the broker checks the credential)")
        if tp.get("authenticationType") == "ManagedServiceIdentity":
            # The factory's managed identity: an Entra ID token for the broker's audience, no secret.
            check(tp.get("aadResourceId") == "__BROKER_AUDIENCE__",
                  f"{name}.aadResourceId is the broker's audience (__BROKER_AUDIENCE__, main.bicep's brokerAudience)")
            check(not {"userName", "password", "servicePrincipalKey"} & set(tp),
                  f"{name} holds no user name, password or key (the identity needs none)")
            check("brokerAudience" in (template_doc or {}).get("outputs", {}),
                  "main.bicep outputs brokerAudience, which deploy.sh renders as __BROKER_AUDIENCE__")
            continue
        check(tp.get("authenticationType") == "Basic",
              f"{name} authenticates with HTTP Basic (the pipeline credential) or the factory's managed identity")
        check(tp.get("userName") == "@{linkedService().clientId}", f"{name}.userName is the credential's client id")
        secret = tp.get("password", {})
        check(secret.get("type") == "AzureKeyVaultSecret"
              and expression_text(secret.get("secretName")) == "@linkedService().credentialSecretName",
              f"{name}.password is the Key Vault secret its credentialSecretName parameter names "
              "(the name infra/names.py computes and deploy.sh stores; ADF expressions cannot compute it)")
    check(any(tp.get("authenticationType") == "ManagedServiceIdentity" for tp in proxy_services.values()),
          "a REST linked service calls the proxy with the factory's managed identity")
    via_proxy_datasets = {n for n, d in kinds["dataset"].items()
                          if d["properties"].get("linkedServiceName", {}).get("referenceName") in proxy_services}
    check(bool(via_proxy_datasets), "a dataset reads through the proxy linked service")
    for name, doc in kinds["pipeline"].items():
        activities = doc["properties"].get("activities", [])
        inputs = {i["referenceName"] for a in activities for i in a.get("inputs", [])}
        if inputs & via_proxy_datasets:
            params = doc["properties"].get("parameters", {})
            services = {kinds["dataset"][i]["properties"]["linkedServiceName"]["referenceName"]
                        for i in inputs & via_proxy_datasets}
            if any(proxy_services[sv].get("authenticationType") == "Basic" for sv in services):
                check(params.get("credentialSecretName", {}).get("defaultValue") == "__DEFAULT_CREDENTIAL_SECRET__"
                      and "python3 infra/names.py credential-secret" in deploy,
                      f"deploy.sh renders infra/names.py's secret name into {name} (it reads through the proxy)")
            else:
                check(not {"clientId", "credentialSecretName"} & set(params),
                      f"{name} reads through the proxy with the factory's identity: no credential parameters")
            check(params.get("integration", {}).get("defaultValue") == "__DEFAULT_INTEGRATION__"
                  and params.get("connection", {}).get("defaultValue") == "__DEFAULT_CONNECTION__",
                  f"{name}'s integration and connection default to the ones deploy.sh made the credential for")
    via_broker_datasets |= via_proxy_datasets

    routes = broker_routes()
    post_fields, answer_fields = token_route_contract()
    check({"access_token", "expires_in"} <= answer_fields, "the token route answers access_token and expires_in")
    for name, doc in kinds["pipeline"].items():
        activities = doc["properties"].get("activities", [])
        function_activities = {a["name"]: a for a in activities if a["type"] == "AzureFunctionActivity"}
        inputs = {i["referenceName"] for a in activities for i in a.get("inputs", [])}
        if inputs and inputs <= via_broker_datasets:
            check(not function_activities and "GetToken" not in json.dumps(activities)
                  and "Authorization" not in json.dumps(activities),
                  f"pipeline {name} reads through the broker (token endpoint or proxy): no GetToken activity, no Authorization header")
            copies = [a for a in activities if a["type"] == "Copy"]
            check(any(a["typeProperties"].get("source", {}).get("paginationRules") for a in copies),
                  f"pipeline {name} pages with ADF pagination rules")
            continue
        # A Web activity with the factory's managed identity (authentication MSI) needs no key.
        msi_activities = {a["name"]: a for a in activities if a["type"] == "WebActivity"
                          and (a["typeProperties"].get("authentication") or {}).get("type") == "MSI"}
        for aname, a in msi_activities.items():
            tp, policy = a["typeProperties"], a.get("policy", {})
            method = tp.get("method", "").upper()
            url = route_template(tp.get("url")) or ""
            prefix = "__FUNCTION_APP_URL__/api/"
            check(url.startswith(prefix), f"{name}.{aname} calls the broker ({prefix}…; got {url})")
            template = url[len(prefix):] if url.startswith(prefix) else None
            match = [r for r in routes if r[0] == template and method in r[1]]
            check(bool(match), f"{name}.{aname}: {method} {template} is a route the broker serves")
            check(bool(match) and match[0][2] == "anonymous",
                  f"{name}.{aname}: the route is anonymous at the host (an identity holds no function key; the broker checks its token)")
            check(template is not None and template.startswith("token"), f"{name}.{aname} calls the token route")
            check(tp["authentication"].get("resource") == "__BROKER_AUDIENCE__",
                  f"{name}.{aname} asks for a token with resource = the broker's audience (__BROKER_AUDIENCE__)")
            check("x-functions-key" not in json.dumps(tp).lower(), f"{name}.{aname} sends no key")
            check(policy.get("secureOutput") is True, f"{name}.{aname} has secureOutput: true")
            check(int(policy.get("retry", 0)) >= 1, f"{name}.{aname} retries")
        if msi_activities:
            check("brokerAudience" in (template_doc or {}).get("outputs", {}),
                  "main.bicep outputs brokerAudience, which deploy.sh renders as __BROKER_AUDIENCE__")
        check(bool(function_activities) or bool(msi_activities),
              f"pipeline {name} gets a token with an Azure Function activity or a Web activity with its managed identity")
        for aname, a in function_activities.items():
            tp, policy = a["typeProperties"], a.get("policy", {})
            method = tp.get("method", "").upper()
            template = route_template(tp.get("functionName"))
            match = [r for r in routes if r[0] == template and method in r[1]]
            check(bool(match), f"{name}.{aname}: {method} {template} is a route the broker serves")
            check(template is not None and template.startswith("token"), f"{name}.{aname} calls the token route")
            check(policy.get("secureOutput") is True, f"{name}.{aname} has secureOutput: true")
            check(int(policy.get("retry", 0)) >= 1, f"{name}.{aname} retries")
            if method == "POST":
                body = expression_text(tp.get("body"))
                keys = set(re.findall(r'\\?"(\w+)\\?":', body if isinstance(body, str) else json.dumps(body)))
                check(bool(keys) and keys <= post_fields,
                      f"{name}.{aname}'s body fields {sorted(keys)} are accepted by POST /api/token")
        text = json.dumps(activities)
        used = set(re.findall(r"activity\('(\w+)'\)\.output\.(\w+)", text))
        for activity, field in sorted(used):
            if activity in function_activities or activity in msi_activities:
                check(field in answer_fields, f"{name} reads {activity}.output.{field}, a field the token route answers")
        bearer = "@{concat('Bearer ', activity('GetToken').output.access_token)}"
        downstream = [a for a in activities if a["type"] in ("Copy", "WebActivity") and a["name"] not in msi_activities]
        for a in downstream:
            headers = a["typeProperties"].get("source", {}).get("additionalHeaders") or a["typeProperties"].get("headers", {})
            check(expression_text(headers.get("Authorization")) == bearer,
                  f"{name}.{a['name']} sends Authorization: {bearer}")
            check(a.get("policy", {}).get("secureInput") is True, f"{name}.{a['name']} has secureInput: true (the token)")
    check_adf_models(kinds)
    types = {a["type"] for d in kinds["pipeline"].values() for a in d["properties"]["activities"]}
    check({"Copy", "WebActivity"} <= types, "there is a Copy (REST source) pipeline and a Web activity pipeline")


def check_adf_models(kinds):
    """Every Data Factory asset against azure-mgmt-datafactory's models (API 2018-06-01): linked
    services, datasets, activities, sources and sinks are polymorphic by "type"."""
    import arm_models

    models = arm_models.Models("azure.mgmt.datafactory.models")
    for kind, resource in (("linkedService", "LinkedServiceResource"), ("dataset", "DatasetResource"),
                           ("pipeline", "PipelineResource")):
        for name, doc in sorted(kinds.get(kind, {}).items()):
            errors = []
            arm_models.check_object(models, models.cls(resource), doc, name, errors)
            check(not errors, f"{kind}/{name}: every property exists in azure-mgmt-datafactory's {resource}"
                  + "".join(f"\n       {e}" for e in errors))


# --- shell ---------------------------------------------------------------------------------------


def check_shell():
    scripts = [os.path.join(ROOT, "infra", "deploy.sh"),
               *sorted(glob.glob(os.path.join(ROOT, "tests", "deploy", "bin", "*")))]
    for s in scripts:
        r = subprocess.run(["bash", "-n", s], capture_output=True, text=True)
        check(r.returncode == 0, f"bash -n {rel(s)}" + (f": {r.stderr.strip()}" if r.returncode else ""))
        check(os.access(s, os.X_OK), f"{rel(s)} is executable")
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
        check(r.returncode == 0, "shellcheck " + " ".join(rel(x) for x in scripts) + (f":\n{r.stdout}" if r.returncode else ""))
    else:
        print("skip shellcheck is not installed")


def main():
    read = settings_read_by_broker()
    parsed = parse_bicep_files()
    main_doc = parsed.get(os.path.join(ROOT, "infra", "main.bicep"))
    if check(main_doc is not None, "infra/main.bicep parsed"):
        check_main_template(main_doc, read)
        check_flex_and_key_safety(main_doc)
        check_against_models(main_doc)
    access_doc = parsed.get(os.path.join(ROOT, "infra", "secret-access.bicep"))
    if check(access_doc is not None, "infra/secret-access.bicep parsed"):
        check_against_models(access_doc, reads=False)
    check_adf(main_doc)
    check_alerts(parsed, ROOT)
    check_least_privilege(ROOT)
    check_shell()
    print(f"\n{len(failures)} failure(s)" if failures else "\ninfra OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
