"""The demo's manifests (templates filled with the loopback ports and file paths).

Credentials are references: the SMTP password comes from a 0600 file, the OAuth 2.0
client secret from an environment variable, the relay's CA from a file
(``tls.caBundleFrom``) - exactly how a user would write them.
"""

from __future__ import annotations

PROVIDER = """\
apiVersion: smtp.reconciler.dev/v1alpha1
kind: OAuth2Provider
metadata:
  name: demo-idp
spec:
  grantType: ClientCredentials
  clientId: smtp-demo
  clientSecretFrom: {{env: {client_secret_env}}}
  tokenEndpoint: {token_url}
  scopes: [{scope}]
"""

PASSWORD_RELAY = """\
apiVersion: smtp.reconciler.dev/v1alpha1
kind: ExternalSmtp
metadata:
  name: billing-relay
spec:
  host: 127.0.0.1
  port: {port}
  authentication: UsernamePassword
  startTLS: true
  username: {username}
  passwordFrom: {{file: {password_file}}}
  from: {sender}
  selected: true
  priority: 0
  failbackDelay: {failback_delay}   # short for the demo (default 5m)
  tls:
    caBundleFrom: {{file: {ca_file}}}
  connectionTest:
    timeoutSeconds: 10
"""  # noqa: S105 - a template holding a file reference, not a password

OAUTH_RELAY = """\
apiVersion: smtp.reconciler.dev/v1alpha1
kind: ExternalSmtp
metadata:
  name: oauth-relay
spec:
  host: 127.0.0.1
  port: {port}
  authentication: OAuth2
  startTLS: true
  username: {oauth_user}
  oauth2ProviderRef: {{name: demo-idp}}
  selected: false
  tls:
    caBundleFrom: {{file: {ca_file}}}
  connectionTest:
    timeoutSeconds: 10
"""

BACKUP_RELAY = """\
apiVersion: smtp.reconciler.dev/v1alpha1
kind: ExternalSmtp
metadata:
  name: backup-relay
spec:
  host: 127.0.0.1
  port: {backup_port}
  authentication: UsernamePassword
  startTLS: true
  username: {username}
  passwordFrom: {{file: {backup_password_file}}}
  from: {sender}
  selected: true
  priority: 10   # a standby: the relay with priority 0 is used while it is Ready
  tls:
    caBundleFrom: {{file: {ca_file}}}
  connectionTest:
    timeoutSeconds: 10
"""
