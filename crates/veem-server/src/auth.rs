//! Bearer tokens to principals. Tokens come from the config file; comparison takes the same time
//! whatever the token, so a caller cannot guess one byte at a time.

use veem_model::Principal;

use crate::config::PrincipalConfig;

/// Who is calling, as established by their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub admin: bool,
}

pub struct Authenticator {
    principals: Vec<PrincipalConfig>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    pub fn new(principals: Vec<PrincipalConfig>) -> Self {
        Self { principals }
    }

    /// The caller a token names, if any. Every configured token is compared, so the time taken
    /// does not tell which one came close.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let mut found = None;
        for p in &self.principals {
            if constant_time_eq(p.token.as_bytes(), token.as_bytes()) {
                found = Some(Caller {
                    principal: p.name.clone(),
                    admin: p.admin,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_principal() {
        let auth = Authenticator::new(vec![
            PrincipalConfig {
                name: Principal::new("sm-a").expect("valid"),
                token: "secret-a".into(),
                admin: false,
            },
            PrincipalConfig {
                name: Principal::new("ops").expect("valid"),
                token: "secret-ops".into(),
                admin: true,
            },
        ]);
        assert_eq!(auth.authenticate("secret-a").map(|c| c.admin), Some(false));
        assert_eq!(auth.authenticate("secret-ops").map(|c| c.admin), Some(true));
        assert_eq!(auth.authenticate("secret-"), None);
        assert_eq!(auth.authenticate(""), None);
    }
}
