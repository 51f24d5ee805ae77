//! The fake AWS account: role aliases and their roles, registered device certificates, and the
//! session credentials the credentials provider issued (which the S3 server then accepts).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::iam::Policy;

/// An IAM role behind a role alias.
#[derive(Debug, Clone)]
pub struct Role {
    /// What the role may do in S3.
    pub policy: Policy,
    /// The role's `MaxSessionDuration`.
    pub max_session: Duration,
    /// Whether its trust policy allows `credentials.iot.amazonaws.com`.
    pub trusts_credentials_provider: bool,
}

impl Role {
    /// A role that trusts the credentials provider, with a 12 h maximum session.
    #[must_use]
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            max_session: Duration::from_secs(43_200),
            trusts_credentials_provider: true,
        }
    }
}

/// An AWS IoT role alias.
#[derive(Debug, Clone)]
pub struct RoleAlias {
    /// `credentialDurationSeconds`. AWS requires 900 s or more; the devstack allows shorter
    /// ones so expiry can be tested in seconds.
    pub duration: Duration,
    /// The role; `None` models a deleted role.
    pub role: Option<Role>,
}

/// A registered device certificate.
#[derive(Debug, Clone)]
pub struct Device {
    /// The thing attached to the certificate.
    pub thing: Option<String>,
    /// Role aliases the certificate's IoT policy allows `iot:AssumeRoleWithCertificate` on
    /// (glob patterns, `*` for all).
    pub allowed_aliases: Vec<String>,
    /// Whether the certificate is ACTIVE.
    pub active: bool,
}

/// Credentials issued by the credentials provider.
#[derive(Debug, Clone)]
pub struct Session {
    /// Secret access key.
    pub secret: String,
    /// Session token.
    pub token: String,
    /// Expiry.
    pub expiration: SystemTime,
    /// What the role allows.
    pub policy: Policy,
    /// The alias it came from.
    pub alias: String,
}

/// A credentials response the server sends instead of the real one (fault injection).
#[derive(Debug, Clone)]
pub struct ForcedResponse {
    /// HTTP status.
    pub status: u16,
    /// `message` of the body.
    pub message: String,
}

/// The issued credentials, as the wire response carries them.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token.
    pub session_token: String,
    /// Expiry.
    pub expiration: SystemTime,
}

/// A refusal: HTTP status, `x-amzn-ErrorType`, `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// `x-amzn-ErrorType` header.
    pub error_type: &'static str,
    /// Body `message`.
    pub message: String,
}

impl Refusal {
    fn new(status: u16, error_type: &'static str, message: &str) -> Self {
        Self {
            status,
            error_type,
            message: message.to_owned(),
        }
    }
}

/// Counters for assertions and demos.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests to the credentials endpoint (after TLS).
    pub credential_requests: u64,
    /// Credentials issued.
    pub credentials_issued: u64,
    /// S3 requests refused because the session had expired.
    pub s3_expired_token: u64,
    /// S3 requests refused by policy.
    pub s3_access_denied: u64,
}

#[derive(Debug, Default)]
struct State {
    aliases: HashMap<String, RoleAlias>,
    devices: HashMap<Vec<u8>, Device>,
    sessions: HashMap<String, Session>,
    admin: Option<(String, String)>,
    forced: VecDeque<ForcedResponse>,
    response_delay: std::time::Duration,
    stats: Stats,
}

/// The account, shared by the servers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Account {
    state: Arc<Mutex<State>>,
}

/// Wall-clock time; the devstack checks expiry against the real clock, as AWS does.
#[allow(clippy::disallowed_methods)]
#[must_use]
pub fn now() -> SystemTime {
    SystemTime::now()
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    (0..len)
        .map(|_| char::from(alphabet[fastrand::usize(..alphabet.len())]))
        .collect()
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Account {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock only happens in a failing test; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates or replaces a role alias.
    pub fn put_alias(&self, name: &str, alias: RoleAlias) {
        self.lock().aliases.insert(name.to_owned(), alias);
    }

    /// Deletes a role alias.
    pub fn delete_alias(&self, name: &str) {
        self.lock().aliases.remove(name);
    }

    /// Registers a device certificate (DER).
    pub fn register_device(&self, cert_der: &[u8], device: Device) {
        self.lock().devices.insert(cert_der.to_vec(), device);
    }

    /// An access key with every permission, for seeding and for reference clients.
    #[must_use]
    pub fn admin_credentials(&self) -> (String, String) {
        let mut st = self.lock();
        st.admin
            .get_or_insert_with(|| {
                (
                    format!("AKIA{}", random_string(16, UPPER)),
                    random_string(40, MIXED),
                )
            })
            .clone()
    }

    /// Makes the next `count` credential requests answer `status`/`message`.
    pub fn force_credential_responses(&self, status: u16, message: &str, count: usize) {
        let mut st = self.lock();
        for _ in 0..count {
            st.forced.push_back(ForcedResponse {
                status,
                message: message.to_owned(),
            });
        }
    }

    /// Makes the credentials provider wait this long before each answer (a slow link).
    pub fn set_credential_delay(&self, delay: std::time::Duration) {
        self.lock().response_delay = delay;
    }

    /// The current answer delay.
    #[must_use]
    pub fn credential_delay(&self) -> std::time::Duration {
        self.lock().response_delay
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// Every session issued so far (for assertions).
    #[must_use]
    pub fn sessions(&self) -> Vec<Session> {
        self.lock().sessions.values().cloned().collect()
    }

    /// The credentials provider's decision for a request from certificate `cert_der` with
    /// thing-name header `thing`, for `alias`. Checks in AWS's order: certificate, thing,
    /// alias, IoT policy, role trust, duration.
    ///
    /// # Errors
    /// The [`Refusal`] AWS would send.
    pub fn exchange(
        &self,
        cert_der: &[u8],
        thing: Option<&str>,
        alias: &str,
    ) -> Result<Issued, Refusal> {
        let mut st = self.lock();
        st.stats.credential_requests += 1;
        if let Some(f) = st.forced.pop_front() {
            let error_type = match f.status {
                429 => "ThrottlingException",
                500..=599 => "InternalFailureException",
                _ => "InvalidRequestException",
            };
            return Err(Refusal::new(f.status, error_type, &f.message));
        }
        let device = st
            .devices
            .get(cert_der)
            .filter(|d| d.active)
            .cloned()
            .ok_or_else(|| {
                Refusal::new(
                    403,
                    "ForbiddenException",
                    "Certificate is invalid on this endpoint",
                )
            })?;
        if let Some(thing) = thing {
            if device.thing.as_deref() != Some(thing) {
                return Err(Refusal::new(
                    403,
                    "ForbiddenException",
                    "Invalid thing name passed",
                ));
            }
        }
        let role_alias = st.aliases.get(alias).cloned().ok_or_else(|| {
            Refusal::new(
                404,
                "ResourceNotFoundException",
                "Role alias does not exist",
            )
        })?;
        if !device
            .allowed_aliases
            .iter()
            .any(|p| crate::iam::glob(p, alias))
        {
            return Err(Refusal::new(403, "AccessDeniedException", "Access Denied"));
        }
        let role = role_alias
            .role
            .filter(|r| r.trusts_credentials_provider)
            .ok_or_else(|| {
                Refusal::new(
                    400,
                    "InvalidRequestException",
                    "Unable to assume the role, or the role to assume does not exist",
                )
            })?;
        if role_alias.duration > role.max_session {
            return Err(Refusal::new(
                400,
                "InvalidRequestException",
                "The requested CredentialDurationSeconds exceeds the MaxSessionDuration set for the role",
            ));
        }
        let issued = Issued {
            access_key_id: format!("ASIA{}", random_string(16, UPPER)),
            secret_access_key: random_string(40, MIXED),
            session_token: random_string(356, MIXED),
            expiration: now() + role_alias.duration,
        };
        st.sessions.insert(
            issued.access_key_id.clone(),
            Session {
                secret: issued.secret_access_key.clone(),
                token: issued.session_token.clone(),
                expiration: issued.expiration,
                policy: role.policy,
                alias: alias.to_owned(),
            },
        );
        st.stats.credentials_issued += 1;
        Ok(issued)
    }

    /// Makes every issued session expire now, as if the clock had run past them (tests the
    /// client's recovery from `ExpiredToken`).
    pub fn expire_all_sessions(&self) {
        let past = now() - Duration::from_secs(1);
        for s in self.lock().sessions.values_mut() {
            s.expiration = past;
        }
    }

    /// The secret for an access key (admin or session), for signature verification.
    #[must_use]
    pub fn secret_for(&self, access_key: &str) -> Option<String> {
        let st = self.lock();
        if let Some((ak, sk)) = &st.admin {
            if ak == access_key {
                return Some(sk.clone());
            }
        }
        st.sessions.get(access_key).map(|s| s.secret.clone())
    }

    /// Whether `access_key` may do `action` on `resource` (admin: always).
    #[must_use]
    pub fn allows(&self, access_key: &str, action: &str, resource: &str) -> bool {
        let st = self.lock();
        if st.admin.as_ref().is_some_and(|(ak, _)| ak == access_key) {
            return true;
        }
        st.sessions
            .get(access_key)
            .is_some_and(|s| s.policy.allows(action, resource))
    }

    /// Checks a signed S3 request's session token, expiry and policy.
    ///
    /// # Errors
    /// `(code, message)` of the S3 error AWS would return.
    pub fn authorize_s3(
        &self,
        access_key: &str,
        token: Option<&str>,
        action: &str,
        resource: &str,
    ) -> Result<(), (&'static str, String)> {
        let mut st = self.lock();
        if st.admin.as_ref().is_some_and(|(ak, _)| ak == access_key) {
            return Ok(());
        }
        let Some(session) = st.sessions.get(access_key).cloned() else {
            return Err((
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.".into(),
            ));
        };
        match token {
            None => {
                return Err((
                    "InvalidAccessKeyId",
                    "The AWS Access Key Id you provided does not exist in our records.".into(),
                ))
            }
            Some(t) if t != session.token => {
                return Err((
                    "InvalidToken",
                    "The provided token is malformed or otherwise invalid.".into(),
                ))
            }
            Some(_) => {}
        }
        if now() >= session.expiration {
            st.stats.s3_expired_token += 1;
            return Err(("ExpiredToken", "The provided token has expired.".into()));
        }
        if !session.policy.allows(action, resource) {
            st.stats.s3_access_denied += 1;
            return Err((
                "AccessDenied",
                format!(
                    "User: arn:aws:sts::000000000000:assumed-role/{}/session is not authorized to perform: {action} on resource: \"{resource}\"",
                    session.alias
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        let a = Account::default();
        a.put_alias(
            "alias",
            RoleAlias {
                duration: Duration::from_secs(3600),
                role: Some(Role::new(Policy::get_only("b"))),
            },
        );
        a.register_device(
            b"cert",
            Device {
                thing: Some("t".into()),
                allowed_aliases: vec!["*".into()],
                active: true,
            },
        );
        a
    }

    #[test]
    fn exchange_follows_aws_order() {
        let a = account();
        let r = |cert: &[u8], thing, alias| a.exchange(cert, thing, alias).map(|_| ()).unwrap_err();
        assert_eq!(r(b"other", Some("t"), "alias").status, 403);
        assert_eq!(
            r(b"cert", Some("x"), "alias").message,
            "Invalid thing name passed"
        );
        assert_eq!(r(b"cert", Some("t"), "nope").status, 404);
        let issued = a.exchange(b"cert", None, "alias").unwrap();
        assert!(issued.access_key_id.starts_with("ASIA"));
        a.force_credential_responses(503, "busy", 1);
        assert_eq!(r(b"cert", Some("t"), "alias").status, 503);
        assert_eq!(a.stats().credentials_issued, 1);
    }

    #[test]
    fn s3_authorization() {
        let a = account();
        let i = a.exchange(b"cert", Some("t"), "alias").unwrap();
        let ok = a.authorize_s3(
            &i.access_key_id,
            Some(&i.session_token),
            "s3:GetObject",
            "arn:aws:s3:::b/k",
        );
        assert_eq!(ok, Ok(()));
        let e = a
            .authorize_s3(
                &i.access_key_id,
                Some("bad"),
                "s3:GetObject",
                "arn:aws:s3:::b/k",
            )
            .unwrap_err();
        assert_eq!(e.0, "InvalidToken");
        let e = a
            .authorize_s3(
                &i.access_key_id,
                Some(&i.session_token),
                "s3:ListBucket",
                "arn:aws:s3:::b",
            )
            .unwrap_err();
        assert_eq!(e.0, "AccessDenied");
    }
}
