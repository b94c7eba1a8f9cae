//! Bearer tokens to principals. Tokens come from the config file, in clear (`token`) or as
//! their SHA-256 (`token_sha256`); either way only digests are kept. A presented token is hashed
//! once and compared with every principal's digest, each comparison taking the same time, so a
//! caller cannot guess one byte at a time nor learn which principal came close.

use veem_model::Principal;

use crate::config::PrincipalConfig;
use crate::token::token_sha256;

/// Who is calling, as established by their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub admin: bool,
}

pub struct Authenticator {
    principals: Vec<([u8; 32], Caller)>,
    /// The principals whose config opens migration between sites to them (`migrate_vees`).
    senders: Vec<Principal>,
}

/// Whether two secrets are equal, in a time that does not tell how much of them is.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// The principals of a checked config ([`crate::Config::parse`] refuses any whose token
    /// digest cannot be had, so none is left out here).
    pub fn new(principals: Vec<PrincipalConfig>) -> Self {
        let senders = principals
            .iter()
            .filter(|p| p.migrate_vees)
            .map(|p| p.name.clone())
            .collect();
        let principals = principals
            .into_iter()
            .filter_map(|p| {
                let digest = p.token_digest().ok()?;
                Some((
                    digest,
                    Caller {
                        principal: p.name,
                        admin: p.admin,
                    },
                ))
            })
            .collect();
        Self {
            principals,
            senders,
        }
    }

    /// Whether `caller` may move its VEEs in and out of this site (`migrate_vees`).
    pub fn may_migrate_vees(&self, caller: &Caller) -> bool {
        self.senders.contains(&caller.principal)
    }

    /// The caller a token names, if any. Every principal is compared, so the time taken does
    /// not tell which one came close.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let presented = token_sha256(token);
        let mut found = None;
        for (digest, caller) in &self.principals {
            if constant_time_eq(digest, &presented) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(
        name: &str,
        token: Option<&str>,
        sha: Option<&str>,
        admin: bool,
    ) -> PrincipalConfig {
        PrincipalConfig {
            name: Principal::new(name).expect("valid"),
            token: token.map(str::to_owned),
            token_sha256: sha.map(str::to_owned),
            admin,
            migrate_vees: false,
        }
    }

    #[test]
    fn tokens_name_their_principal() {
        let auth = Authenticator::new(vec![
            principal("sm-a", Some("secret-a"), None, false),
            principal("ops", Some("secret-ops"), None, true),
        ]);
        assert_eq!(auth.authenticate("secret-a").map(|c| c.admin), Some(false));
        assert_eq!(auth.authenticate("secret-ops").map(|c| c.admin), Some(true));
        assert_eq!(auth.authenticate("secret-"), None);
        assert_eq!(auth.authenticate(""), None);
    }

    #[test]
    fn a_hashed_token_authenticates_and_a_wrong_one_does_not() {
        let (token, digest) = crate::token::new_token();
        let auth = Authenticator::new(vec![
            principal("sm-a", None, Some(&digest.to_uppercase()), false),
            principal("sm-b", Some("secret-b"), None, false),
        ]);
        let caller = auth.authenticate(&token).expect("the token's principal");
        assert_eq!(caller.principal.as_str(), "sm-a");
        assert_eq!(auth.authenticate(&token[..63]), None, "truncated");
        assert_eq!(auth.authenticate(&digest), None, "the digest is no token");
        assert_eq!(
            auth.authenticate("secret-b")
                .map(|c| c.principal.to_string()),
            Some("sm-b".to_owned())
        );
    }
}
