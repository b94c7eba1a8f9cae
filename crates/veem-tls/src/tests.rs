//! Real handshakes over an in-memory pipe between configurations built from `init_site`'s
//! files.

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

fn site(dir: &Path, agents: &[&str]) -> SiteFiles {
    init_site(
        dir,
        &SiteSpec {
            names: vec!["veem.example".into()],
            ips: vec!["10.0.0.1".parse().expect("an address")],
            agents: agents.iter().map(|a| (*a).to_owned()).collect(),
        },
    )
    .expect("the site's certificates are made")
}

fn server_identity(files: &SiteFiles) -> Identity {
    Identity::load(&files.server_cert, &files.server_key).expect("the server's identity loads")
}

fn agent_identity(files: &SiteFiles, index: usize) -> Identity {
    let (_, cert, key) = &files.agents[index];
    Identity::load(cert, key).expect("the agent's identity loads")
}

/// One handshake and one byte each way: what the server saw of the client's certificate, or
/// the first side's error.
async fn handshake(
    server: Arc<ServerConfig>,
    client: ClientConfig,
    name: &str,
) -> Result<Option<ClientCertificate>, String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = Acceptor::new(server);
    let server_side = tokio::spawn(async move {
        let (mut stream, certificate) = acceptor.accept(server_io).await?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        stream.write_all(&byte).await?;
        stream.flush().await?;
        Ok::<_, std::io::Error>(certificate)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let client_side = async {
        let mut stream = connector.connect(name, client_io).await?;
        stream.write_all(b"x").await?;
        stream.flush().await?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        Ok::<_, std::io::Error>(byte)
    };
    let client_result = client_side.await;
    let server_result = server_side.await.map_err(|e| e.to_string())?;
    match (client_result, server_result) {
        (Ok(byte), Ok(certificate)) => {
            assert_eq!(&byte, b"x");
            Ok(certificate)
        }
        (Err(e), _) => Err(format!("client: {e}")),
        (_, Err(e)) => Err(format!("server: {e}")),
    }
}

#[test]
fn a_site_is_a_ca_a_server_and_its_agents_with_private_keys() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = site(dir.path(), &["h4", "h5"]);
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "agent-h4.pem",
        "agent-h4.key",
        "agent-h5.pem",
        "agent-h5.key",
    ] {
        assert!(dir.path().join(name).is_file(), "{name} is written");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in [&files.ca_key, &files.server_key, &files.agents[0].2] {
            let mode = std::fs::metadata(key)
                .expect("written")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }
    assert_eq!(load_certificates(&files.ca_cert).expect("a PEM").len(), 1);
    assert!(matches!(
        init_site(dir.path(), &SiteSpec::default()),
        Err(TlsError::SiteExists { .. })
    ));
}

#[test]
fn an_agent_name_must_be_a_file_name() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for bad in ["", "../h4", "h/4", ".hidden", "h 4"] {
        let spec = SiteSpec {
            agents: vec![bad.to_owned()],
            ..SiteSpec::default()
        };
        assert!(
            matches!(
                init_site(dir.path(), &spec),
                Err(TlsError::BadAgentName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(!dir.path().join("ca.key").exists(), "nothing written");
}

#[test]
fn unusable_pem_files_are_named() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = site(dir.path(), &[]);
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("written");
    assert!(matches!(
        load_certificates(&empty),
        Err(TlsError::NoCertificate { .. })
    ));
    // A certificate file is not a key file.
    assert!(matches!(
        load_private_key(&files.server_cert),
        Err(TlsError::NoPrivateKey { .. })
    ));
    let missing = dir.path().join("missing.pem");
    let error = load_certificates(&missing).expect_err("no such file");
    assert!(error.to_string().contains("missing.pem"), "{error}");
    // A key that is not the certificate's does not make a configuration.
    let mismatched = Identity::load(&files.server_cert, &files.ca_key).expect("both load");
    assert!(matches!(
        server_config(&mismatched, None),
        Err(TlsError::Config(_))
    ));
}

#[tokio::test]
async fn clients_of_the_site_verify_the_server_by_each_of_its_names() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = site(dir.path(), &[]);
    let server = server_config(&server_identity(&files), None).expect("a server config");
    for name in ["localhost", "127.0.0.1", "::1", "veem.example", "10.0.0.1"] {
        let client = client_config(Some(&files.ca_cert), None).expect("a client config");
        assert_eq!(
            handshake(server.clone(), client, name).await,
            Ok(None),
            "{name}"
        );
    }
    // A name the certificate does not carry.
    let client = client_config(Some(&files.ca_cert), None).expect("a client config");
    let error = handshake(server.clone(), client, "other.example")
        .await
        .expect_err("a name the certificate lacks");
    assert!(error.contains("client"), "{error}");
    // Without the site's CA, the system's roots do not know the server.
    let client = client_config(None, None).expect("a client config");
    let error = handshake(server.clone(), client, "localhost")
        .await
        .expect_err("an unknown issuer");
    assert!(error.to_lowercase().contains("issuer"), "{error}");
    // Nor does another site's CA.
    let other = tempfile::tempdir().expect("a temporary directory");
    let other_files = site(other.path(), &[]);
    let client = client_config(Some(&other_files.ca_cert), None).expect("a client config");
    assert!(handshake(server, client, "localhost").await.is_err());
}

#[tokio::test]
async fn agents_present_certificates_of_the_site_ca_and_token_callers_none() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = site(dir.path(), &["h4"]);
    let server = server_config(&server_identity(&files), Some(&files.ca_cert))
        .expect("a server config with client certificates");

    // An agent with its certificate: the server sees it.
    let agent = agent_identity(&files, 0);
    let client = client_config(Some(&files.ca_cert), Some(&agent)).expect("a client config");
    let seen = handshake(server.clone(), client, "localhost")
        .await
        .expect("the handshake succeeds")
        .expect("a client certificate");
    assert_eq!(seen.fingerprint().len(), 64);
    // It is h4's, and no other host's.
    assert!(seen.is_for("h4"));
    for other in ["h5", "h", "h44", "H4", ""] {
        assert!(!seen.is_for(other), "{other:?}");
    }

    // A caller with no certificate (a bearer token) is let in.
    let client = client_config(Some(&files.ca_cert), None).expect("a client config");
    assert_eq!(
        handshake(server.clone(), client, "localhost").await,
        Ok(None)
    );

    // A certificate of another CA is refused during the handshake.
    let other = tempfile::tempdir().expect("a temporary directory");
    let other_files = site(other.path(), &["h4"]);
    let stranger = agent_identity(&other_files, 0);
    let client = client_config(Some(&files.ca_cert), Some(&stranger)).expect("a client config");
    let error = handshake(server.clone(), client, "localhost")
        .await
        .expect_err("another CA's client certificate");
    assert!(!error.is_empty());

    // The server's own certificate is no client certificate (its usage is server auth).
    let server_as_client = server_identity(&files);
    let client =
        client_config(Some(&files.ca_cert), Some(&server_as_client)).expect("a client config");
    assert!(handshake(server, client, "localhost").await.is_err());
}

#[test]
fn hex_is_lowercase_two_digits_a_byte() {
    assert_eq!(hex(&[0, 15, 255]), "000fff");
}
