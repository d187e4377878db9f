//! One certificate from the CA (RFC 8555): the account (stored, or created
//! and stored), an order for the domains, an HTTP-01 challenge per name
//! answered from [`super::Http01Challenges`] (or a TLS-ALPN-01 one from
//! [`super::TlsAlpn01Challenges`]), then finalization with a key made
//! here (rcgen makes it and the CSR) and the chain fetched. Each step logs a
//! line; a failure says which step and why.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tracing::{info, warn};

use super::Acme;
use super::storage::{Certificate, Storage};
use crate::config::{AcmeChallenge, AcmeConfig};

/// How long the CA may take to validate the challenges, and then to issue.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);

/// An HTTPS client for the directory, trusting `ca_root` when it is set.
fn builder(config: &AcmeConfig) -> anyhow::Result<AccountBuilder> {
    match &config.ca_root {
        Some(file) => Account::builder_with_root(file)
            .with_context(|| format!("cannot use server.tls.acme.ca_root {}", file.display())),
        None => Account::builder().context("cannot set up an HTTPS client with the system's roots"),
    }
}

/// The stored account, or a new one (then stored).
pub async fn account(config: &AcmeConfig, storage: &Storage) -> anyhow::Result<Account> {
    let file = storage.account_file();
    let stored = storage
        .read_account()
        .with_context(|| format!("cannot read {}", file.display()))?;
    if let Some(json) = stored {
        match serde_json::from_str::<AccountCredentials>(&json) {
            Ok(credentials) => {
                let account = builder(config)?
                    .from_credentials(credentials)
                    .await
                    .with_context(|| {
                        format!("cannot reach the ACME directory {}", config.directory)
                    })?;
                info!(account = account.id(), file = %file.display(), "ACME: using the stored account");
                return Ok(account);
            }
            Err(err) => warn!(
                file = %file.display(),
                "ACME: the stored account does not parse ({err}); creating a new one"
            ),
        }
    }
    create_account(config, storage).await
}

pub async fn create_account(config: &AcmeConfig, storage: &Storage) -> anyhow::Result<Account> {
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder(config)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .with_context(|| {
            format!(
                "cannot create an account at the ACME directory {}",
                config.directory
            )
        })?;
    let file = storage.account_file();
    let json = serde_json::to_string_pretty(&credentials)?;
    storage
        .write_account(&json)
        .with_context(|| format!("cannot store the account in {}", file.display()))?;
    info!(account = account.id(), file = %file.display(), "ACME: account created");
    Ok(account)
}

/// Whether an error says the CA no longer knows the account (a test CA
/// restarted, or the account was deactivated): then a new one is made.
pub fn account_unknown(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<instant_acme::Error>(),
            Some(instant_acme::Error::Api(problem))
                if problem.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist"))
        )
    })
}

/// Orders a certificate for the configured domains and stores it.
pub async fn certificate(
    config: &AcmeConfig,
    account: &Account,
    storage: &Storage,
    acme: &Acme,
) -> anyhow::Result<Certificate> {
    let domains = config.domains.join(", ");
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|name| Identifier::Dns(name.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("the CA refused the order")?;
    info!(order = order.url(), "ACME: order placed for {domains}");

    // The answers stay up until the order is decided, then go.
    let mut answers = AnswerGuard {
        acme,
        http_tokens: Vec::new(),
        tls_names: Vec::new(),
    };
    let (kind, label, where_) = match config.challenge {
        AcmeChallenge::Http01 => (
            ChallengeType::Http01,
            "HTTP-01",
            "at /.well-known/acme-challenge/",
        ),
        AcmeChallenge::TlsAlpn01 => (
            ChallengeType::TlsAlpn01,
            "TLS-ALPN-01",
            "on the TLS port (acme-tls/1)",
        ),
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.context("cannot fetch an authorization")?;
        let name = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => {
                info!(domain = name, "ACME: {name} is already authorized");
                continue;
            }
            status => bail!("the authorization for {name} is {status:?}"),
        }
        let mut challenge = authorization
            .challenge(kind.clone())
            .ok_or_else(|| anyhow!("the CA offers no {kind:?} challenge for {name}"))?;
        let key_authorization = challenge.key_authorization();
        match config.challenge {
            AcmeChallenge::Http01 => {
                acme.challenges
                    .insert(&challenge.token, key_authorization.as_str());
                answers.http_tokens.push(challenge.token.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                acme.tls_alpn
                    .insert(&name, key_authorization.digest().as_ref())
                    .map_err(|why| anyhow!("{why}"))?;
                answers.tls_names.push(name.clone());
            }
        }
        challenge
            .set_ready()
            .await
            .with_context(|| format!("the CA refused the {label} challenge for {name}"))?;
        info!(
            domain = name,
            token = challenge.token,
            "ACME: {label} challenge for {name} ready {where_}"
        );
    }

    let retries = RetryPolicy::new().timeout(POLL_TIMEOUT);
    let status = order
        .poll_ready(&retries)
        .await
        .context("the order did not become ready")?;
    if status != OrderStatus::Ready {
        let why = failed_challenges(&mut order).await;
        bail!("the CA did not validate {domains}: {why}");
    }
    drop(answers);
    info!("ACME: {domains} validated; finalizing with a new key");

    let key_pem = order
        .finalize()
        .await
        .context("finalizing the order failed")?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .context("the CA did not issue the certificate")?;
    let certificate = Certificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())
        .map_err(|why| anyhow!("the CA's certificate is unusable: {why}"))?;
    storage
        .write_certificate(&chain_pem, &key_pem)
        .with_context(|| {
            format!(
                "cannot store the certificate in {}",
                storage.chain_file().display()
            )
        })?;
    Ok(certificate)
}

/// Why the authorizations of a failed order failed, in the CA's words.
async fn failed_challenges(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        for challenge in &authorization.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(format!("{}: {problem}", authorization.identifier()));
            }
        }
    }
    if reasons.is_empty() {
        "the order became invalid".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// Removes the challenge answers it holds when the attempt ends, however it
/// ends.
struct AnswerGuard<'a> {
    acme: &'a Acme,
    http_tokens: Vec<String>,
    tls_names: Vec<String>,
}

impl Drop for AnswerGuard<'_> {
    fn drop(&mut self) {
        for token in &self.http_tokens {
            self.acme.challenges.remove(token);
        }
        for name in &self.tls_names {
            self.acme.tls_alpn.remove(name);
        }
    }
}
