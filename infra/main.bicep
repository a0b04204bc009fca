// oauth-broker on Azure: a Linux Function App running the broker as a custom handler, with no stored
// keys. Deployed by infra/deploy.sh (which also packages and uploads the code); see the README.
//
// - Flex Consumption plan (FC1). Linux Consumption (Y1) retires on 2028-09-30 and gets no new
//   features; Flex is its replacement. The runtime is `custom` (FUNCTIONS_WORKER_RUNTIME is not an
//   app setting on Flex: functionAppConfig.runtime replaces it). Timer schedules are UTC on Flex.
// - One user-assigned managed identity for everything: the host's storage (AzureWebJobsStorage__*),
//   the deployment package container, the broker's table (BROKER_STORAGE__*), Key Vault references
//   and Application Insights ingestion. The storage account refuses shared keys; Application
//   Insights refuses instrumentation-key-only ingestion. Least privilege: Storage Blob Data Owner on
//   the account (the host's keys, timer leases and the package), Storage Table Data Contributor on
//   the broker's table only, Monitoring Metrics Publisher on the component; Key Vault Secrets User on
//   each secret it reads (infra/secret-access.bicep, deployed by deploy.sh once the secrets exist),
//   never on the vault. Data Factory gets Secrets User the same way, on its function key and its
//   pipeline credentials' secrets only.
// - Optional private networking (privateNetwork): a virtual network, Flex VNet integration, private
//   endpoints with private DNS zones for blob, queue, table and Key Vault, and public network access
//   disabled on the storage account and the vault.
// - Key Vault (RBAC mode) holds the token encryption keys, the integrations' client secrets and the
//   function key Azure Data Factory uses; app settings refer to them with @Microsoft.KeyVault(...).
// - HTTPS only, TLS 1.2 minimum. FTP is not offered on Flex Consumption (and siteConfig.ftpsState is
//   rejected there, ARM error 51021), so the template does not set it; SCM basic-auth publishing
//   credentials are off (deployment goes through Entra ID).
// - The encryption key secret (broker-encryption-keys) is NOT in this template: deploy.sh creates it
//   once, only when the vault has none, so no deployment (re-run, failed run, empty parameter) can
//   ever overwrite it. The vault has purge protection.
// - API versions are those of the pinned Azure management SDKs that scripts/check-infra validates
//   every property against (see tests/check_infra.py).

targetScope = 'resourceGroup'

@description('Microsoft Entra ID tenant whose access tokens the broker accepts (BROKER_ENTRA_TENANT_ID); empty: no Entra ID callers.')
param entraTenantId string = ''

@description('The audience those tokens must carry (BROKER_ENTRA_AUDIENCE: an application ID URI and/or client id, comma-separated); empty: the client id of the app\'s managed identity.')
param entraAudience string = ''

@description('Short lowercase prefix for resource names (letters and digits, 3-11 characters).')
@minLength(3)
@maxLength(11)
param namePrefix string

@description('Azure region of every resource (must offer Flex Consumption).')
param location string = resourceGroup().location

@description('Plain app settings that integrations.json refers to with %NAME% (client ids, vendor URLs), by setting name: { "XERO_CLIENT_ID": "..." }.')
param integrationSettings object = {}

@description('Names of the secret settings integrations.json refers to with %NAME% (client secrets). Each app setting is a Key Vault reference to the secret named like the setting, lower case, "_" replaced by "-".')
param integrationSecretNames array = []

@secure()
@description('Values of secret settings to store in Key Vault now, by setting name: { "XERO_CLIENT_SECRET": "..." }. Secrets already in the vault may be left out.')
param integrationSecrets object = {}

@description('The broker\'s public base URL (a custom domain); empty means https://<app>.azurewebsites.net.')
param publicUrl string = ''

@description('NCRONTAB schedule (UTC) of the refresh timer.')
param refreshSchedule string = '0 */5 * * * *'

@description('Table Storage table of the broker.')
param tableName string = 'oauthbroker'

@description('Flex Consumption instance memory (MB); 2048 is the documented default.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Flex Consumption scale-out limit.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Object id of the person or pipeline that operates the broker: gets Key Vault Secrets Officer (rotate the encryption key, store the function key for ADF). Empty: none.')
param operatorPrincipalId string = ''

@description('Principal type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@description('Private networking: a virtual network with Flex VNet integration, private endpoints and private DNS zones for blob, queue, table and Key Vault, and public network access disabled on the storage account and the vault. Data Factory then needs a managed virtual network with managed private endpoints, or a self-hosted integration runtime, to read its secrets (docs/deploy.md).')
param privateNetwork bool = false

@description('Address space of the virtual network (privateNetwork); two /24 subnets are carved from its start.')
param vnetAddressPrefix string = '10.90.0.0/16'

@description('Tags for every resource.')
param tags object = {}

@description('E-mail address alerted when a connection needs a new consent or an integration is misconfigured (alerts.bicep). Empty: no alerts.')
param alertEmail string = ''

// ------------------------------------------------------------------------------------------------
// names

var prefix = toLower(namePrefix)
var suffix = uniqueString(resourceGroup().id, prefix)
var short = take(suffix, 6)
var appName = '${prefix}-broker-${short}'
var planName = 'plan-${prefix}-${short}'
var identityName = 'id-${prefix}-broker-${short}'
var storageName = take('st${prefix}${suffix}', 24)
var vaultName = take('kv-${prefix}-${suffix}', 24)
var workspaceName = 'log-${prefix}-broker-${short}'
var insightsName = 'appi-${prefix}-broker-${short}'
var deploymentContainerName = 'app-package'
var vnetName = 'vnet-${prefix}-broker-${short}'
var vaultUri = 'https://${vaultName}${environment().suffixes.keyvaultDns}'
var baseUrl = empty(publicUrl) ? 'https://${appName}.azurewebsites.net' : publicUrl

// Key Vault secret names.
var encryptionKeysSecretName = 'broker-encryption-keys'
var functionKeySecretName = 'broker-function-key'
// The admin key the broker checks itself (BROKER_API_KEY) on the routes that are anonymous at the
// host because they accept Entra ID callers; created by deploy.sh, like the function key.
var apiKeySecretName = 'broker-api-key'

// Built-in role definitions.
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// ------------------------------------------------------------------------------------------------
// identity, monitoring, storage, vault

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: insightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: privateNetwork ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetwork ? 'Deny' : 'Allow'
      bypass: 'None'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource table 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: tableName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: vaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // The encryption key can never be purged, even by an owner, while it is in the soft-delete window.
    enablePurgeProtection: true
    publicNetworkAccess: privateNetwork ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetwork ? 'Deny' : 'Allow'
      bypass: 'None'
    }
  }
}

resource integrationSecretValues 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [for s in items(integrationSecrets): {
  parent: vault
  name: replace(toLower(s.key), '_', '-')
  properties: {
    value: s.value
    contentType: 'oauth-broker app setting ${s.key}'
  }
}]

// ------------------------------------------------------------------------------------------------
// role assignments. Names are guid(scope, principal id, role), as Microsoft advises
// (role-assignments-template: a re-created identity with the same resource id gets a new principal id
// and so new assignments, instead of colliding with ones that outlived their principal).
// Key Vault Secrets User is not here: it is granted per secret (infra/secret-access.bicep).

// Host storage (AzureWebJobsStorage__*: host keys, timer leases and schedule status, all in blobs)
// and the Flex deployment package: Storage Blob Data Owner, the role the Functions docs name for an
// identity-based AzureWebJobsStorage (functions-reference, "Connecting to host storage with an
// identity"). Not granted, because nothing here needs them: Storage Queue Data Contributor (blob and
// queue triggers only; the Flex samples' rbac.bicep leaves it off by default) and Storage Table Data
// Contributor on the account (the host's optional diagnostic-event tables, AZFD0003; the broker's
// own table has its role below).
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.properties.principalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The broker's table, and only it (…/tableServices/default/tables/<name>; Azure RBAC scopes for
// Table Storage go down to a single table: storage/tables/assign-azure-role-data-access).
resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(table.id, identity.properties.principalId, roles.storageTableDataContributor)
  scope: table
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights ingestion with Entra ID (local auth is off).
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.properties.principalId, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The operator (the person or pipeline running deploy.sh): creates, reads and rotates the encryption
// key and stores the function key and pipeline credentials, so Secrets Officer on the vault.
resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

// ------------------------------------------------------------------------------------------------
// optional private networking: a virtual network with a subnet for Flex VNet integration (delegated
// to Microsoft.App/environments, the delegation Flex Consumption requires: flex-consumption-how-to,
// and azure-cli's FLEX_SUBNET_DELEGATION) and one for private endpoints; a private endpoint and a
// private DNS zone (linked to the network) per storage service the host and the broker use and for
// Key Vault (private-endpoint-dns: privatelink.<service>.core.windows.net,
// privatelink.vaultcore.azure.net).

// Empty without privateNetwork: the loops below then deploy nothing.
var privateLinks = privateNetwork ? [
  {
    name: 'blob'
    groupId: 'blob'
    zone: 'privatelink.blob.${environment().suffixes.storage}'
    target: storage.id
  }
  {
    name: 'queue'
    groupId: 'queue'
    zone: 'privatelink.queue.${environment().suffixes.storage}'
    target: storage.id
  }
  {
    name: 'table'
    groupId: 'table'
    zone: 'privatelink.table.${environment().suffixes.storage}'
    target: storage.id
  }
  {
    name: 'vault'
    groupId: 'vault'
    zone: 'privatelink${replace(environment().suffixes.keyvaultDns, '.vault.', '.vaultcore.')}'
    target: vault.id
  }
] : []
var appSubnetName = 'snet-app'
var endpointSubnetName = 'snet-private-endpoints'

resource vnet 'Microsoft.Network/virtualNetworks@2024-07-01' = if (privateNetwork) {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        vnetAddressPrefix
      ]
    }
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: cidrSubnet(vnetAddressPrefix, 24, 0)
          delegations: [
            {
              name: 'flex'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: endpointSubnetName
        properties: {
          addressPrefix: cidrSubnet(vnetAddressPrefix, 24, 1)
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

resource dnsZones 'Microsoft.Network/privateDnsZones@2024-06-01' = [for link in privateLinks: {
  name: link.zone
  location: 'global'
  tags: tags
}]

resource dnsLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [for (link, i) in privateLinks: {
  parent: dnsZones[i]
  name: vnetName
  location: 'global'
  tags: tags
  properties: {
    virtualNetwork: {
      id: resourceId('Microsoft.Network/virtualNetworks', vnetName)
    }
    registrationEnabled: false
  }
  dependsOn: [
    vnet
  ]
}]

resource endpoints 'Microsoft.Network/privateEndpoints@2024-07-01' = [for link in privateLinks: {
  name: 'pe-${prefix}-${link.name}-${short}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, endpointSubnetName)
    }
    privateLinkServiceConnections: [
      {
        name: link.name
        properties: {
          privateLinkServiceId: link.target
          groupIds: [
            link.groupId
          ]
        }
      }
    ]
  }
  dependsOn: [
    vnet
  ]
}]

resource endpointDns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-07-01' = [for (link, i) in privateLinks: {
  parent: endpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: link.name
        properties: {
          privateDnsZoneId: dnsZones[i].id
        }
      }
    ]
  }
}]

// ------------------------------------------------------------------------------------------------
// the function app

// Every setting the broker reads in Azure (tests/check_infra.py checks this list against the code).
var brokerSettings = [
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storage.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identity.properties.clientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: insights.properties.ConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identity.properties.clientId};Authorization=AAD'
  }
  {
    name: 'BROKER_STORAGE__accountName'
    value: storage.name
  }
  {
    name: 'BROKER_STORAGE__tableServiceUri'
    value: storage.properties.primaryEndpoints.table
  }
  {
    name: 'BROKER_STORAGE__clientId'
    value: identity.properties.clientId
  }
  {
    name: 'BROKER_TABLE'
    value: tableName
  }
  {
    name: 'BROKER_ENCRYPTION_KEYS'
    value: '@Microsoft.KeyVault(SecretUri=${vaultUri}/secrets/${encryptionKeysSecretName}/)'
  }
  {
    name: 'BROKER_INTEGRATIONS'
    value: 'integrations.json'
  }
  // Checked by the broker on the token and admin routes (anonymous at the host): the admin key, and
  // the token-only key Data Factory holds (the same secret as its function key).
  {
    name: 'BROKER_API_KEY'
    value: '@Microsoft.KeyVault(SecretUri=${vaultUri}/secrets/${apiKeySecretName}/)'
  }
  {
    name: 'BROKER_TOKEN_KEYS'
    value: '@Microsoft.KeyVault(SecretUri=${vaultUri}/secrets/${functionKeySecretName}/)'
  }
  // Entra ID callers (deploy.sh --adf-identity-access / --entra-audience); an empty value is unset.
  {
    name: 'BROKER_ENTRA_TENANT_ID'
    value: entraTenantId
  }
  {
    name: 'BROKER_ENTRA_AUDIENCE'
    value: empty(entraTenantId) ? '' : brokerAudience
  }
  {
    name: 'BROKER_PUBLIC_URL'
    value: baseUrl
  }
  {
    name: 'BROKER_REFRESH_SCHEDULE'
    value: refreshSchedule
  }
  {
    name: 'RUST_LOG'
    value: 'info'
  }
]

var brokerAudience = empty(entraAudience) ? identity.properties.clientId : entraAudience

var integrationSettingList = [for s in items(integrationSettings): {
  name: s.key
  value: string(s.value)
}]

var integrationSecretSettingList = [for n in integrationSecretNames: {
  name: n
  value: '@Microsoft.KeyVault(SecretUri=${vaultUri}/secrets/${replace(toLower(n), '_', '-')}/)'
}]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Flex VNet integration (privateNetwork): outbound traffic, Key Vault references included, goes
    // through the delegated subnet and resolves the private DNS zones.
    virtualNetworkSubnetId: privateNetwork ? resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, appSubnetName) : null
    keyVaultReferenceIdentity: identity.id
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      appSettings: concat(brokerSettings, integrationSettingList, integrationSecretSettingList)
    }
  }
  // The app's first start resolves its @Microsoft.KeyVault(...) settings: the secrets exist first,
  // and deploy.sh grants the identity Secrets User on each of them (infra/secret-access.bicep) before
  // it uploads the code; on Flex nothing runs before that. With privateNetwork, the endpoints and
  // their DNS exist before the app starts reaching storage and the vault through them.
  dependsOn: [
    deploymentContainer
    table
    blobOwner
    tableContributor
    metricsPublisher
    integrationSecretValues
    endpointDns
    dnsLinks
  ]
}

// No basic-auth publishing credentials on the SCM site (deployment goes through Entra ID). FTP is not
// offered on Flex Consumption, so there is no 'ftp' policy to set.
resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

// ------------------------------------------------------------------------------------------------
// alerts on the broker's event lines (README, Operations)

module alerts 'alerts.bicep' = if (!empty(alertEmail)) {
  name: 'broker-alerts'
  params: {
    alertEmail: alertEmail
    location: location
    namePrefix: prefix
    nameSuffix: short
    applicationInsightsId: insights.id
    tags: tags
  }
}

// ------------------------------------------------------------------------------------------------

output functionAppName string = app.name
output functionAppHostName string = app.properties.defaultHostName
output publicUrl string = baseUrl
output redirectUri string = '${baseUrl}/api/auth/callback'
output keyVaultName string = vault.name
output keyVaultUri string = vaultUri
output encryptionKeysSecretName string = encryptionKeysSecretName
output functionKeySecretName string = functionKeySecretName
output apiKeySecretName string = apiKeySecretName
output brokerAudience string = empty(entraTenantId) ? '' : brokerAudience
output storageAccountName string = storage.name
output tableName string = table.name
output identityClientId string = identity.properties.clientId
output identityPrincipalId string = identity.properties.principalId
output privateNetwork bool = privateNetwork
