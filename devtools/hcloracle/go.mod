module spire-kms-reconciler/devtools/hcloracle

go 1.22

require github.com/hashicorp/hcl v1.0.1-vault-7
