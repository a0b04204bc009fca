// Key Vault Secrets User on individual secrets, never on the vault: deployed by infra/deploy.sh once
// the secrets exist (a role assignment's scope must exist; the encryption key, the function key and
// the pipeline credentials are created by deploy.sh outside main.bicep, so no deployment can
// overwrite them). Run once for the broker's identity (the secrets its app settings refer to) and,
// with --data-factory, once for the factory's managed identity (its function key and its pipeline
// credentials' secrets).
//
// Scope /subscriptions/…/vaults/<vault>/secrets/<secret>: Azure RBAC for Key Vault supports a role
// assignment on a single secret (key-vault/general/rbac-guide, "Secret scope role assignment"); in
// Bicep such an assignment is an extension resource whose scope is the secret
// (bicep/scope-extension-resources). Assignments take a few minutes to apply; principalType
// ServicePrincipal avoids the PrincipalNotFound race for a new identity (role-assignments-template).
// Deployed in incremental mode: assignments of earlier runs (other connections) stay.

targetScope = 'resourceGroup'

@description('Name of the broker\'s Key Vault.')
param vaultName string

@description('Object (principal) id of the managed identity that may read the secrets.')
param principalId string

@description('Names of the secrets it may read, each of which exists.')
param secretNames array

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = [for name in secretNames: {
  parent: vault
  name: name
}]

resource readers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in secretNames: {
  name: guid(secrets[i].id, principalId, keyVaultSecretsUser)
  scope: secrets[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

output scopes array = [for (name, i) in secretNames: secrets[i].id]
