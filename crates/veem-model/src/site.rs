//! Sites of the federation: what this VEEM keeps of another site's VEEM to act there as an SM
//! does (section 2.1 of the paper: a VEEM is, toward a remote VEEM, one more principal).

use serde::{Deserialize, Serialize};

use crate::ids::SiteName;

/// A registered site: where its VMI answers and what this VEEM presents there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub name: SiteName,
    /// The remote VEEM's base URL, e.g. `https://east.example:7070`.
    pub url: String,
    /// The bearer token this VEEM presents there: a principal of the remote's, not an admin.
    pub token: String,
    /// The CA that signed the remote's certificate, when the system's roots do not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// A client certificate and key, where the remote asks for mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
    /// The secret part of the URL the site pushes this VEEM's VEEs' changes to
    /// (`/vmi/v1/sites/{name}/inbox/{inbox}`): whoever knows it speaks for the site there.
    pub inbox: String,
    /// The monitoring subscription this VEEM holds at the site, which pushes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    pub created_ms: u64,
}
