//! Single sign-on for the admin page: an OpenID Connect relying party
//! (`[admin.oidc]`), built on the `openidconnect` crate, which does the
//! protocol's checks (ID token signature against the provider's key set,
//! `iss`, `aud`, `exp`, `nonce`); this module supplies its HTTP client,
//! keeps the sign-in in progress in a signed cookie and turns the verified
//! claims into an account name and a role.
//!
//! - `http`: the provider's HTTP client (HTTPS only, bounded).
//! - `flow`: the sign-in in progress (`__Host-tg_oidc`).
//! - `claims`: the account name and the role from the verified claims.
//!
//! The admin listener calls [`Sso::begin`] for `GET /auth/oidc/login` and
//! [`Sso::finish`] for `GET /auth/oidc/callback`, then starts the session.

mod claims;
mod flow;
mod http;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError, TokenResponse,
};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::OidcConfig;
use crate::roles::Role;
use crate::tls::ClientTlsError;
use http::describe;

pub(crate) use claims::IdentityError;
pub(crate) use flow::{clear_cookie, cookie_value, set_cookie, FlowError};

/// The callback's path on the admin listener (the default redirect URL's).
pub(crate) const CALLBACK_PATH: &str = "/auth/oidc/callback";
/// The provider's key set is fetched again for a token signed with a key
/// it does not list (the provider rotated its keys), at most this often:
/// tokens naming made-up key ids cannot make the gateway hammer the provider.
const KEY_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// Discovery retries while the provider is down: quickly at first, then
/// once a minute.
const DISCOVERY_RETRY_MIN: Duration = Duration::from_secs(1);
const DISCOVERY_RETRY_MAX: Duration = Duration::from_secs(60);
/// Asymmetric signatures only: never `none`, never an HMAC keyed with the
/// client secret (a secret shared with the provider is not the provider's
/// signature).
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 10] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EcdsaP521Sha512,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// The client as discovery configures it: authorization endpoint set,
/// token endpoint as the provider's metadata says.
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why single sign-on cannot be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum SsoSetupError {
    #[error("admin.oidc.ca_file: {0}")]
    Tls(#[from] ClientTlsError),
}

/// A sign-in that did not end in a session. `page` text is shown to the
/// person (no secret in it); `reason` goes to the audit line.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Discovery has not succeeded yet (the provider is down or unreachable).
    NotReady,
    /// Too many failed sign-ins from this client: wait this many seconds.
    Throttled(u64),
    /// The request's `Host` cannot make a redirect URL.
    BadHost,
    Flow(FlowError),
    /// `state` is missing or not the one this browser's sign-in started with.
    State,
    /// The callback has neither a code nor an error.
    NoCode,
    /// The provider sent the person back with an error (they cancelled, or
    /// it refused them).
    Provider {
        error: String,
        description: String,
    },
    /// The callback names another issuer (`iss`, RFC 9207).
    ForeignIssuer,
    /// The provider could not be reached or its answer not understood.
    Unreachable(String),
    /// The token endpoint refused the code.
    TokenRefused(String),
    NoIdToken,
    /// The ID token failed a check (signature, issuer, audience, expiry, nonce).
    IdToken(String),
    /// A verified person who may not sign in (no account name, no role).
    Identity(IdentityError),
    /// A verified person whose account here refuses the sign-in (it is
    /// disabled, or a password account has that name): why, in words.
    Account(String),
}

impl Failure {
    /// The HTTP status of the page that says so.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Failure::NotReady => 503,
            Failure::Throttled(_) => 429,
            Failure::Unreachable(_) | Failure::NoIdToken => 502,
            Failure::BadHost | Failure::Flow(_) | Failure::State | Failure::NoCode => 400,
            Failure::Provider { .. }
            | Failure::ForeignIssuer
            | Failure::TokenRefused(_)
            | Failure::IdToken(_)
            | Failure::Identity(_)
            | Failure::Account(_) => 403,
        }
    }

    /// What happened, for the person and the audit line alike.
    pub(crate) fn message(&self) -> String {
        match self {
            Failure::NotReady => "single sign-on is not available yet: the identity provider has not answered the gateway (it keeps trying); sign in with a password meanwhile".into(),
            Failure::Throttled(secs) => format!("too many failed sign-ins from this address; try again in {secs} s"),
            Failure::BadHost => "the request's Host header cannot form the sign-in's return address; open the page by its usual address".into(),
            Failure::Flow(e) => format!("{e}; start the sign-in again"),
            Failure::State => "the sign-in's state does not match the one this browser started; start the sign-in again".into(),
            Failure::NoCode => "the identity provider sent neither a code nor an error".into(),
            Failure::Provider { error, description } if description.is_empty() => {
                format!("the identity provider refused the sign-in ({error})")
            }
            Failure::Provider { error, description } => {
                format!("the identity provider refused the sign-in ({error}: {description})")
            }
            Failure::ForeignIssuer => "the answer comes from another identity provider (its iss is not the configured issuer)".into(),
            Failure::Unreachable(e) => format!("the identity provider could not be reached: {e}"),
            Failure::TokenRefused(e) => format!("the identity provider did not accept the sign-in's code: {e}"),
            Failure::NoIdToken => "the identity provider's answer holds no ID token".into(),
            Failure::IdToken(e) => format!("the ID token was refused: {e}"),
            Failure::Identity(e) => e.to_string(),
            Failure::Account(text) => format!("the account here refused the sign-in: {text}"),
        }
    }

    /// Whether anyone could have sent this callback without signing in at
    /// the provider (no cookie, a made-up state, code or error): such
    /// failures are throttled like wrong passwords. An ID token that fails
    /// a check, or a person without a role, came from a real sign-in.
    pub(crate) fn made_up(&self) -> bool {
        !matches!(
            self,
            Failure::IdToken(_)
                | Failure::Identity(_)
                | Failure::Account(_)
                | Failure::NoIdToken
                | Failure::NotReady
        )
    }

    /// The account, when the failure came after the person was identified.
    pub(crate) fn user(&self) -> Option<&str> {
        match self {
            Failure::Identity(IdentityError::NoRole { user, .. }) => Some(user),
            _ => None,
        }
    }
}

/// A verified sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedIn {
    pub(crate) user: String,
    pub(crate) role: Role,
}

/// The relying party: one per gateway, shared by the admin listener's
/// connections.
pub(crate) struct Sso {
    config: OidcConfig,
    http: http::ProviderHttp,
    key: flow::FlowKey,
    clock: Clock,
    /// The provider's metadata and key set: `None` until discovery
    /// succeeds; replaced whole when the key set is fetched again, so a
    /// sign-in reads one consistent copy without a lock.
    provider: ArcSwapOption<CoreProviderMetadata>,
    /// When the key set was last fetched, for [`KEY_REFETCH_INTERVAL`]. A
    /// std mutex: held for a comparison, never across an `.await`.
    keys_fetched: Mutex<Option<Instant>>,
}

impl Sso {
    /// `None` when `[admin.oidc]` is not configured. `secret` is the
    /// server secret: the flow cookie's key is derived from it, so every
    /// replica of a cluster accepts the others' cookies.
    pub(crate) fn build(
        config: Option<&OidcConfig>,
        secret: &[u8],
        clock: Clock,
    ) -> Result<Option<Arc<Sso>>, SsoSetupError> {
        let Some(config) = config else {
            return Ok(None);
        };
        Ok(Some(Arc::new(Sso {
            http: http::ProviderHttp::new(config.ca_file.as_deref())?,
            config: config.clone(),
            key: flow::FlowKey::derive(secret),
            clock,
            provider: ArcSwapOption::empty(),
            keys_fetched: Mutex::new(None),
        })))
    }

    pub(crate) fn display_name(&self) -> &str {
        &self.config.display_name
    }

    /// Discovery, retried until it succeeds or the gateway stops. The
    /// gateway serves meanwhile; the password login does not depend on it.
    pub(crate) async fn discover(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut wait = DISCOVERY_RETRY_MIN;
        loop {
            let outcome = tokio::select! {
                r = self.discover_once() => r,
                _ = stop.changed() => return,
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(issuer = %self.config.issuer, "single sign-on ready: the identity provider's configuration and keys are loaded");
                    return;
                }
                Err(e) => tracing::warn!(
                    issuer = %self.config.issuer,
                    error = %e,
                    retry_in_s = wait.as_secs(),
                    "single sign-on unavailable: discovery at the identity provider failed; the password login works meanwhile; retrying"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            wait = (wait * 2).min(DISCOVERY_RETRY_MAX);
        }
    }

    async fn discover_once(&self) -> Result<(), String> {
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| e.to_string())?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| describe(&e))?;
        self.stamp_keys_fetched();
        self.provider.store(Some(Arc::new(meta)));
        Ok(())
    }

    fn stamp_keys_fetched(&self) {
        let mut last = self.keys_fetched.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(self.clock.now());
    }

    /// `GET /auth/oidc/login`: the provider's authorization URL to redirect
    /// to, and the flow cookie's value. `host` is the request's `Host`
    /// (checked by the caller), for the default redirect URL.
    pub(crate) fn begin(&self, host: Option<&str>) -> Result<(String, String), Failure> {
        let meta = self.provider.load_full().ok_or(Failure::NotReady)?;
        let redirect = match (&self.config.redirect_url, host) {
            (Some(u), _) => u.clone(),
            (None, Some(h)) => format!("https://{h}{CALLBACK_PATH}"),
            (None, None) => return Err(Failure::BadHost),
        };
        let client = self.client(&meta, &redirect)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let cookie = self.key.seal(&flow::Flow {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            redirect,
            expires: self.clock.unix().saturating_add(flow::FLOW_TTL_SECS),
        });
        Ok((url.to_string(), cookie))
    }

    /// `GET /auth/oidc/callback`: checks the provider's answer against the
    /// flow cookie, redeems the code (with the PKCE verifier), verifies the
    /// ID token and maps its claims to an account and a role.
    pub(crate) async fn finish(
        &self,
        query: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<SignedIn, Failure> {
        let mut code = None;
        let mut state = None;
        let mut error = None;
        let mut description = String::new();
        let mut iss = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "code" => code = Some(v.into_owned()),
                "state" => state = Some(v.into_owned()),
                "error" => error = Some(v.into_owned()),
                "error_description" => description = v.into_owned(),
                "iss" => iss = Some(v.into_owned()),
                _ => {}
            }
        }
        let flow = self
            .key
            .open(cookie, self.clock.unix())
            .map_err(Failure::Flow)?;
        let state_ok = state.is_some_and(|s| bool::from(s.as_bytes().ct_eq(flow.state.as_bytes())));
        if !state_ok {
            return Err(Failure::State);
        }
        if let Some(error) = error {
            return Err(Failure::Provider {
                error: clip(&error),
                description: clip(&description),
            });
        }
        let code = code.ok_or(Failure::NoCode)?;
        // RFC 9207: a provider that names itself must be ours (a mix-up
        // between providers otherwise sends one's code to the other).
        if iss.is_some_and(|i| i != self.config.issuer) {
            return Err(Failure::ForeignIssuer);
        }
        let meta = self.provider.load_full().ok_or(Failure::NotReady)?;
        let client = self.client(&meta, &flow.redirect)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| Failure::Unreachable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(r) => {
                    Failure::TokenRefused(clip(&r.to_string()))
                }
                openidconnect::RequestTokenError::Request(e) => {
                    Failure::Unreachable(clip(&describe(&e)))
                }
                // No detail: the answer it could not read may hold tokens.
                openidconnect::RequestTokenError::Parse(..) => Failure::Unreachable(
                    "its answer to the token request is not a token response".into(),
                ),
                openidconnect::RequestTokenError::Other(e) => Failure::Unreachable(clip(&e)),
            })?;
        let id_token = tokens.id_token().ok_or(Failure::NoIdToken)?;
        let nonce = Nonce::new(flow.nonce);
        let verify = |client: &Client| {
            let verifier = client.id_token_verifier().set_allowed_algs(ALLOWED_ALGS);
            id_token.claims(&verifier, &nonce).map(|_| ())
        };
        match verify(&client) {
            Ok(()) => {}
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // Signed with a key the copy here does not list: the
                // provider may have rotated its keys.
                let Some(meta) = self.refetch_keys(&meta).await else {
                    return Err(Failure::IdToken(
                        "it is signed with a key the identity provider does not list".into(),
                    ));
                };
                verify(&self.client(&meta, &flow.redirect)?)
                    .map_err(|e| Failure::IdToken(clip(&e.to_string())))?;
            }
            Err(e) => return Err(Failure::IdToken(clip(&e.to_string()))),
        }
        // Verified: its claims, every one of them (not only those the
        // library models), are the provider's word.
        let claims = payload(&id_token.to_string())
            .ok_or_else(|| Failure::IdToken("its claims are not a JSON object".into()))?;
        let c = &self.config;
        let user = claims::username(&claims, &c.username_claim).map_err(Failure::Identity)?;
        let role = claims::role(&claims, &c.role_claim, &c.roles, c.default_role, &user)
            .map_err(Failure::Identity)?;
        Ok(SignedIn { user, role })
    }

    /// The key set fetched again, unless it was fetched within
    /// [`KEY_REFETCH_INTERVAL`]; the updated metadata on success.
    async fn refetch_keys(&self, meta: &CoreProviderMetadata) -> Option<Arc<CoreProviderMetadata>> {
        {
            let now = self.clock.now();
            let mut last = self.keys_fetched.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now.saturating_duration_since(t) < KEY_REFETCH_INTERVAL) {
                return None;
            }
            *last = Some(now);
        }
        match CoreJsonWebKeySet::fetch_async(meta.jwks_uri(), &self.http).await {
            Ok(keys) => {
                tracing::info!(issuer = %self.config.issuer, "single sign-on: fetched the identity provider's keys again (a token named a key not listed)");
                let meta = Arc::new(meta.clone().set_jwks(keys));
                self.provider.store(Some(meta.clone()));
                Some(meta)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %describe(&e), "single sign-on: fetching the identity provider's keys failed");
                None
            }
        }
    }

    fn client(&self, meta: &CoreProviderMetadata, redirect: &str) -> Result<Client, Failure> {
        let redirect = RedirectUrl::new(redirect.to_owned()).map_err(|_| Failure::BadHost)?;
        let secret = self
            .config
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose().to_owned()));
        // HTTP Basic unless the provider says it takes the secret only in
        // the body.
        let post_only = meta
            .token_endpoint_auth_methods_supported()
            .is_some_and(|m| {
                !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
                    && m.contains(&CoreClientAuthMethod::ClientSecretPost)
            });
        let client = CoreClient::from_provider_metadata(
            meta.clone(),
            ClientId::new(self.config.client_id.clone()),
            secret,
        )
        .set_redirect_uri(redirect);
        Ok(if post_only {
            client.set_auth_type(AuthType::RequestBody)
        } else {
            client
        })
    }
}

/// A verified JWT's claims: its middle part, decoded.
fn payload(jwt: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let part = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Provider-supplied text on a page or an audit line: short, one line.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}
