// oauth-broker on Azure: a Linux Function App running the broker as a custom handler, with no stored
// keys. Deployed by infra/deploy.sh (which also packages and uploads the code); see the README.
//
// - Flex Consumption plan (FC1). Linux Consumption (Y1) retires on 2028-09-30 and gets no new
//   features; Flex is its replacement. The runtime is `custom` (FUNCTIONS_WORKER_RUNTIME is not an
//   app setting on Flex: functionAppConfig.runtime replaces it). Timer schedules are UTC on Flex.
// - One user-assigned managed identity for everything: the host's storage (AzureWebJobsStorage__*),
//   the deployment package container, the broker's table (BROKER_STORAGE__*), Key Vault references
//   and Application Insights ingestion. The storage account refuses shared keys; Application
//   Insights refuses instrumentation-key-only ingestion.
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

@description('Object id of the Data Factory\'s managed identity: gets Key Vault Secrets User to read the function key. Empty: none.')
param dataFactoryPrincipalId string = ''

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
var vaultUri = 'https://${vaultName}${environment().suffixes.keyvaultDns}'
var baseUrl = empty(publicUrl) ? 'https://${appName}.azurewebsites.net' : publicUrl

// Key Vault secret names.
var encryptionKeysSecretName = 'broker-encryption-keys'
var functionKeySecretName = 'broker-function-key'

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
    publicNetworkAccess: 'Enabled'
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
// role assignments (the identity's, and optionally the operator's and Data Factory's)

// Host storage (timer leases and keys in blobs) and the Flex deployment package.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The broker's table (and the host's diagnostic-event tables in the same, dedicated account).
resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault references in app settings.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identity.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights ingestion with Entra ID (local auth is off).
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource dataFactorySecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(dataFactoryPrincipalId)) {
  name: guid(vault.id, dataFactoryPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: dataFactoryPrincipalId
    principalType: 'ServicePrincipal'
  }
}

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
  // The app's first start resolves its @Microsoft.KeyVault(...) settings: the secrets and the role
  // that reads them exist first. (broker-encryption-keys is created by deploy.sh before the code is
  // uploaded; on Flex nothing runs before that.)
  dependsOn: [
    deploymentContainer
    table
    blobOwner
    tableContributor
    secretsUser
    metricsPublisher
    integrationSecretValues
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
output storageAccountName string = storage.name
output tableName string = table.name
output identityClientId string = identity.properties.clientId
output identityPrincipalId string = identity.properties.principalId
